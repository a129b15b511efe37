"""What the web server lets a browser do, enforced in one ASGI middleware in front of Gradio's routes.

- **Files**: Gradio's file routes answer only for the app's own videos (regular files directly inside the
  dated folders `<outputs>/<YYYY-MM-DD>/`, no symlink anywhere on the way) and for media files in this
  run's private temp folder (previews, uploads), never for a folder, never for anything else. Served
  files get `nosniff` and a sandbox CSP, so nothing is rendered as a page from the app's origin.
- **Hosts and origins**: an app that listens only on this computer answers only to a localhost Host
  header (a DNS-rebinding page names its own host); a request that changes state (POST, PUT, PATCH,
  DELETE) and comes from a page of another origin is refused, wherever the app listens.
- **Logins**: failed logins are limited per client (Gradio's own /login has no limit).
- **Cancel**: Gradio's cancel route (gradio_client's `Job.cancel()`) also cancels the job that runs for
  that event, so a cancelled API job stops at its next step and writes no video.

Why a middleware and not Gradio options: `allowed_paths`/`blocked_paths` serve whole folders (json
sidecars, journals, symlinks resolved into them), and Gradio has no host, origin or login-rate checks.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

DAY_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")
VIDEO_SUFFIXES = (".mp4",)                                   # what the app writes
MEDIA_SUFFIXES = (".mp4", ".webm", ".m4v", ".mov", ".mkv", ".avi", ".png", ".jpg", ".jpeg", ".webp", ".gif")
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/", "/file=", "/file/")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
TEMP_PREFIX = "wan-studio-"


# ---------------------------------------------------------------------------------------------- paths
def _no_symlinks_below(root: Path, path: Path) -> bool:
    """Every component of `path` below `root` exists and is not a symlink; the last is a regular file."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    cur = root
    parts = rel.parts
    if not parts:
        return False
    for i, part in enumerate(parts):
        cur = cur / part
        try:
            st = os.lstat(cur)
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode):
            return False
        if i == len(parts) - 1:
            return stat.S_ISREG(st.st_mode)
        if not stat.S_ISDIR(st.st_mode):
            return False
    return False


@dataclass
class Policy:
    """Which files may be handed to Gradio and served. `outputs_dir` and `temp_dir` are resolved once."""
    outputs_dir: Path
    temp_dir: Path | None = None

    def __post_init__(self):
        self.outputs_dir = Path(os.path.realpath(self.outputs_dir))
        if self.temp_dir is not None:
            self.temp_dir = Path(os.path.realpath(self.temp_dir))

    def video(self, path) -> Path | None:
        """`path` as the app's own video, or None: an .mp4 regular file directly inside a dated folder
        of the outputs folder, reached without symlinks."""
        if not path:
            return None
        p = Path(os.path.abspath(str(path)))
        if p.suffix.lower() not in VIDEO_SUFFIXES or p.parent.parent != self.outputs_dir:
            return None
        if not DAY_FOLDER.match(p.parent.name) or p.name.startswith("."):
            return None
        return p if _no_symlinks_below(self.outputs_dir, p) else None

    def may_serve(self, path: str) -> bool:
        if not path or "://" in path or path.startswith(("http:", "https:", "data:")):
            return False
        p = Path(os.path.abspath(path))
        if self.video(p) is not None:
            return True
        if self.temp_dir is not None and p.suffix.lower() in MEDIA_SUFFIXES:
            return _no_symlinks_below(self.temp_dir, p)
        return False


# ---------------------------------------------------------------------------------------------- temp
def make_temp_dir() -> Path:
    """This run's private folder for Gradio's uploads and previews, outside anything else served."""
    clean_stale_temp_dirs()
    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temp_dirs(base: Path | None = None) -> list[Path]:
    """Remove temp folders of earlier runs whose process is gone (a crash or a kill left them)."""
    base = Path(base or tempfile.gettempdir())
    removed = []
    for d in base.glob(f"{TEMP_PREFIX}*"):
        m = re.match(rf"^{TEMP_PREFIX}(\d+)-", d.name)
        if not m or not d.is_dir() or d.is_symlink() or _pid_alive(int(m.group(1))):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


_GRADIO_CACHE_NAME = re.compile(r"^[0-9a-f]{20,64}$")


def clean_old_gradio_cache(outputs_dir: Path) -> int:
    """Earlier versions put Gradio's cache in `<outputs>/.gradio` and never emptied it. Remove the cache
    folders Gradio made there (hash-named); returns the bytes freed. Anything else is left alone."""
    root = Path(outputs_dir) / ".gradio"
    if not root.is_dir() or root.is_symlink():
        return 0
    freed = 0
    for d in root.iterdir():
        if not _GRADIO_CACHE_NAME.match(d.name) or d.is_symlink() or not d.is_dir():
            continue
        for f in d.rglob("*"):
            try:
                if f.is_file() and not f.is_symlink():
                    freed += f.stat().st_size
            except OSError:
                pass
        shutil.rmtree(d, ignore_errors=True)
    try:
        root.rmdir()
    except OSError:
        pass
    return freed


# ---------------------------------------------------------------------------------------------- logins
@dataclass
class LoginLimiter:
    """At most `max_failures` failed logins per client in `window_s`; then 429 until the window passes."""
    max_failures: int = 5
    window_s: float = 60.0
    _fails: dict = field(default_factory=lambda: defaultdict(deque))

    def _trim(self, key: str, now: float) -> deque:
        q = self._fails[key]
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def retry_after(self, key: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        q = self._trim(key, now)
        return 0.0 if len(q) < self.max_failures else self.window_s - (now - q[0])

    def failed(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._trim(key, now).append(now)

    def succeeded(self, key: str) -> None:
        self._fails.pop(key, None)


# ---------------------------------------------------------------------------------------------- origins
def _host_port(netloc: str, default_port: int | None) -> tuple[str, int | None]:
    u = urlsplit("//" + netloc)
    try:
        port = u.port
    except ValueError:
        port = None
    return (u.hostname or "").lower(), port if port is not None else default_port


def same_origin(origin: str, host_header: str) -> bool:
    """The Origin of the page that sent a request names the host the request went to."""
    u = urlsplit(origin)
    if u.scheme not in ("http", "https") or not u.hostname:
        return False
    default = 443 if u.scheme == "https" else 80
    o_host, o_port = _host_port(u.netloc, default)
    h_host, h_port = _host_port(host_header, None)
    return o_host == h_host and (h_port is None or h_port == o_port)


# ---------------------------------------------------------------------------------------------- middleware
@dataclass
class Guard:
    """Settings of the middleware; `local_only` turns on the Host check. `extra_origins` take the share
    link's origin once it is known."""
    policy: Policy
    jobs: object = None                 # ui.jobs.Jobs
    local_only: bool = True
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    extra_origins: list = field(default_factory=list)


async def _send_plain(send, status: int, text: str, headers: list | None = None) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}
    return receive


class GuardMiddleware:
    def __init__(self, app, guard: Guard):
        self.app, self.g = app, guard

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        method = scope.get("method", "GET").upper()
        path = scope.get("path", "")
        if self.g.local_only and _host_port(host, None)[0].strip("[]") not in LOCAL_HOSTS:
            return await self._refuse(scope, send, 403, "This app answers only to localhost (start it with "
                                      "--listen to reach it under another name).")
        origin = headers.get("origin")
        if (method in UNSAFE_METHODS or scope["type"] == "websocket") and origin is not None:
            if not (same_origin(origin, host) or origin in self.g.extra_origins):
                return await self._refuse(scope, send, 403, "Cross-site request refused.")
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        for prefix in FILE_ROUTES:
            if path.startswith(prefix):
                return await self._file(scope, receive, send, path[len(prefix):], prefix)
        if method == "POST" and path.rstrip("/") == "/login":
            return await self._login(scope, receive, send)
        if method == "POST" and path.rstrip("/") == "/gradio_api/cancel" and self.g.jobs is not None:
            body = await _read_body(receive)
            try:
                data = json.loads(body or b"{}")
                self.g.jobs.cancel_event(data.get("session_hash"), data.get("event_id"))
            except (ValueError, AttributeError):
                pass
            return await self.app(scope, _replay(body), send)
        return await self.app(scope, receive, send)

    async def _refuse(self, scope, send, status: int, text: str):
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _send_plain(send, status, text)

    async def _file(self, scope, receive, send, target: str, prefix: str):
        # Gradio reads `file/<path>` relative to its working folder and `file=<path>` as given.
        if not self.g.policy.may_serve(target):
            return await _send_plain(send, 403, "File not allowed.")

        async def send_with_headers(msg):
            if msg["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"),
                         (b"content-security-policy", b"default-src 'none'; sandbox")]
                msg = {**msg, "headers": [*msg.get("headers", []), *extra]}
            await send(msg)
        return await self.app(scope, receive, send_with_headers)

    async def _login(self, scope, receive, send):
        client = (scope.get("client") or ("?", 0))[0]
        wait = self.g.limiter.retry_after(client)
        if wait > 0:
            return await _send_plain(send, 429, f"Too many failed logins. Try again in {int(wait) + 1} s.",
                                     [(b"retry-after", str(int(wait) + 1).encode())])
        status = {}

        async def watch(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)
        await self.app(scope, receive, watch)
        if status.get("code") == 200:
            self.g.limiter.succeeded(client)
        elif status.get("code") in (400, 401):
            self.g.limiter.failed(client)
