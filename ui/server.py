"""Building and launching the web app, and the rules that keep it safe to run:

- beyond this computer (`--listen`, `--share`) it never serves without a password: `--auth-file`, the
  WAN_STUDIO_AUTH environment variable or `--auth` (which other users can read in the process list), or
  one generated with `secrets` and printed once;
- what the browser may fetch, which hosts and origins may call it, and how many failed logins a client
  gets are enforced by ui.serving's middleware; Gradio's own uploads and previews go to a private temp
  folder of this run, outside the outputs folder, cleaned while running and removed at exit;
- uploads are limited to 2 GB by Gradio itself and checked for being a video by the Extend tab;
- a share tunnel that cannot open (offline) is reported and the app keeps serving locally;
- a port that is taken is named, with the port used instead.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from wan_app.errors import UserError  # noqa: E402
from wan_app.settings import Settings, load_settings  # noqa: E402

from . import common, serving  # noqa: E402
from .common import PRODUCT  # noqa: E402
from .extend_tab import ExtendTab  # noqa: E402
from .i2v_tab import I2VTab  # noqa: E402
from .runs import Page  # noqa: E402
from .settings_tab import SettingsTab  # noqa: E402
from .t2v_tab import T2VTab  # noqa: E402

log = logging.getLogger(__name__)

GENERATED_USER = "wan"
TITLE = PRODUCT
AUTH_ENV = "WAN_STUDIO_AUTH"
# Gradio's cache of this run (previews, uploads): checked every 30 min, files older than 2 h removed.
DELETE_CACHE = (1800, 7200)


# ---------------------------------------------------------------------------------------------- the app
def build_app(engine, settings: Settings, settings_path: str | os.PathLike | None = None,
              settings_notice: str | None = None, *, listen: bool = False, share: bool = False,
              temp_dir: Path | None = None) -> gr.Blocks:
    """The whole page for this engine. Importable for tests; `launch` adds the network and security."""
    ctx = common.AppContext(engine=engine, settings=settings,
                            settings_path=Path(settings_path) if settings_path else None,
                            settings_notice=settings_notice, listen=listen, share=share,
                            policy=serving.Policy(engine.outputs_dir, temp_dir))
    with gr.Blocks(title=TITLE, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(f"## {TITLE}\nText and image to video with Wan2.1 / Wan2.2, planned for this machine's memory.",
                    elem_id="wan-header")
        gr.HTML(f'<div class="wan-notice">{common.escape(settings_notice)}</div>' if settings_notice else "",
                visible=bool(settings_notice), elem_id="wan-settings-notice")
        page = Page(ctx)
        with gr.Tabs():
            with gr.Tab("Text to Video", id="t2v"):
                t2v = T2VTab(ctx, page)
            with gr.Tab("Image to Video", id="i2v"):
                i2v = I2VTab(ctx, page)
            with gr.Tab("Extend", id="extend"):
                ext = ExtendTab(ctx, page, t2v)
            with gr.Tab("Settings", id="settings"):
                st = SettingsTab(ctx, page, t2v)
        page.wire()
        for ev in t2v.model_list_events + st.model_list_events:
            ev.then(i2v.sync_models, [i2v.model], i2v.sync_outputs(), show_progress="hidden",
                    api_visibility="private")
        ext_outputs = []
        if ext.available:
            ext_outputs = ext.load_outputs()
            for ev in t2v.model_list_events + st.model_list_events:
                ev.then(ext.sync_models, [ext.model], ext.sync_outputs(), show_progress="hidden",
                        api_visibility="private")

        def on_load(last, request: gr.Request):
            """Everything that can change while the server runs, as it is for this visit."""
            saved = ctx.saved_settings()
            out = t2v.on_load(last, saved.overrides)
            model = out.get(t2v.model, {}).get("value") if isinstance(out.get(t2v.model), dict) else None
            out.update(st.on_load(request, model))
            ov = common.overrides_of(out.get(page.overrides))
            size = out.get(t2v.size, {}).get("value") if isinstance(out.get(t2v.size), dict) else None
            frames = out.get(t2v.frames, {}).get("value") if isinstance(out.get(t2v.frames), dict) else None
            out[st.plan] = st.plan_preview(model, size, frames, ov)
            out.update(i2v.on_load(last, saved.overrides))
            if ext.available:
                out.update(ext.on_load(last))
            return out

        load_outputs = list(dict.fromkeys([*t2v.load_outputs(), *st.load_outputs(), st.plan, *i2v.load_outputs(),
                                           *ext_outputs]))
        demo.load(on_load, [page.last], load_outputs, show_progress="hidden", api_visibility="private")
        def on_unload(request: gr.Request):
            ctx.jobs.forget(common.session_of(request))      # the tab closed: its jobs have no viewer
        demo.unload(on_unload)
    # GPU events share one concurrency id with limit 1 (see common.GPU); the light ones may overlap a run.
    demo.queue(default_concurrency_limit=4)
    demo.wan_context = ctx
    return demo


# ---------------------------------------------------------------------------------------------- security
def parse_auth(text: str, source: str = "auth") -> tuple[str, str]:
    user, sep, password = (text or "").strip().partition(":")
    if not sep or not user or not password:
        raise UserError(source, f"'{text.strip() if text else ''}' is not USER:PASSWORD",
                        "write it like me:a-long-password")
    return user, password


def read_auth_file(path: str | os.PathLike) -> tuple[str, str]:
    p = Path(path).expanduser()
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    except OSError as e:
        raise UserError("auth-file", f"{p} could not be read ({e.strerror})",
                        "give a file holding one line USER:PASSWORD") from None
    if not lines:
        raise UserError("auth-file", f"{p} is empty", "write one line USER:PASSWORD in it")
    return parse_auth(lines[0], "auth-file")


def resolve_auth(auth: str | None, listen: bool, share: bool, auth_file: str | None = None,
                 environ: dict | None = None) -> tuple[tuple[str, str] | None, bool]:
    """(credentials or None, whether they were generated). The password comes from --auth-file, --auth,
    or the WAN_STUDIO_AUTH environment variable, in that order. Local-only use needs no password;
    anything reachable from another machine always gets one."""
    env = os.environ if environ is None else environ
    if auth_file:
        return read_auth_file(auth_file), False
    if auth:
        return parse_auth(auth), False
    if env.get(AUTH_ENV):
        return parse_auth(env[AUTH_ENV], AUTH_ENV), False
    if listen or share:
        return (GENERATED_USER, secrets.token_urlsafe(12)), True
    return None, False


def check_port(port) -> int:
    try:
        p = int(port)
    except (TypeError, ValueError):
        raise UserError("port", f"'{port}' is not a port number", "use a number from 1 to 65535") from None
    if not 1 <= p <= 65535:
        raise UserError("port", f"{p} is not a port", "use a number from 1 to 65535, e.g. 7860")
    return p


def _bind_probe(host: str, port: int) -> OSError | None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if os.name != "nt":
            # As the server itself binds (uvicorn sets it too): a port whose old connections linger in
            # TIME_WAIT after a restart is free. Windows' SO_REUSEADDR would let two servers share a port.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e
    return None


def free_port(start: int, host: str, tries: int = 50) -> tuple[int, str | None]:
    """(port, None) when `start` is free, else (the next free port, why `start` was not used)."""
    start = check_port(start)
    why = None
    for port in range(start, min(start + tries, 65536)):
        err = _bind_probe(host, port)
        if err is None:
            return port, why
        if why is None:
            why = ("another program is already listening on it (perhaps another Wan Studio)"
                   if err.errno == errno.EADDRINUSE else f"it cannot be used ({err.strerror})")
    raise UserError("port", f"no free port in {start}-{start + tries - 1} ({why})", "choose another with --port")


def served_paths(outputs_dir: Path, models_dirs: list[Path], settings_path: Path | None):
    """(allowed_paths, blocked_paths) for Gradio itself. Nothing is allowed as a folder: the app's videos
    are static paths checked file by file by ui.serving; models and the settings file are blocked."""
    blocked = [str(Path(d).resolve()) for d in models_dirs]
    if settings_path is not None:
        blocked.append(str(settings_path.resolve()))
    # A models folder that *is* (or holds) the outputs folder would block every video: leave it out.
    out = outputs_dir.resolve()
    blocked = [b for b in blocked if not (Path(b) == out or Path(b) in out.parents)]
    return [], blocked


def _warn_outputs(outputs_dir: Path, models_dirs) -> None:
    try:
        common.check_outputs_folder(str(outputs_dir), models_dirs)
    except UserError as e:
        if "already holds" in e.problem:
            return          # an outputs folder of an earlier version: only its day folders' videos are served
        print(f"warning: outputs folder: {e.problem}. Only the videos in its dated folders are ever served, "
              f"but {e.fix}.", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- launch
def launch(args, configure_engine: Callable[[object], None] | None = None) -> int:
    """Start the web app from app.py's options; blocks until Ctrl+C. Returns the exit code.
    `configure_engine(engine)` runs before the page is built (the test launcher adds step hooks)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)   # Gradio's own startup requests, not news
    from wan_app import outputs
    from wan_app.engine import Engine

    listen, share = bool(getattr(args, "listen", False)), bool(getattr(args, "share", False))
    settings_path = Path(getattr(args, "settings", None) or "settings.json")
    try:
        credentials, generated = resolve_auth(getattr(args, "auth", None), listen, share,
                                              getattr(args, "auth_file", None))
        host = "0.0.0.0" if listen else "127.0.0.1"
        wanted = check_port(getattr(args, "port", 7860) or 7860)
        port, why = free_port(wanted, host)
    except UserError as e:
        print(f"error: {e.field}: {e.problem}" + (f"\n  fix: {e.fix}" if e.fix else ""), file=sys.stderr)
        return 2
    settings, notice = load_settings(settings_path)
    if notice:
        print(f"note: {notice}", file=sys.stderr)
    try:
        models_dirs = [Path(d).expanduser() for d in (getattr(args, "models_dir", None) or settings.models_dirs)]
        outputs_dir = outputs.ensure_writable(getattr(args, "outputs_dir", None) or settings.outputs_dir).resolve()
    except UserError as e:
        print(f"error: {e.field}: {e.problem}" + (f"\n  fix: {e.fix}" if e.fix else ""), file=sys.stderr)
        return 2
    _warn_outputs(outputs_dir, models_dirs)
    try:
        from wan_app.outputs import clean_stale            # unfinished writes that a crash left behind
        clean_stale(outputs_dir, temp_dirs=[])
    except ImportError:
        pass
    freed = serving.clean_old_gradio_cache(outputs_dir)
    if freed:
        print(f"Removed the old upload/preview cache in {outputs_dir / '.gradio'} ({freed / 1e6:.0f} MB).",
              flush=True)
    # A plain `kill` (SIGTERM) ends the app like Ctrl+C, so the temp folder below is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    temp_dir = serving.make_temp_dir()
    os.environ["GRADIO_TEMP_DIR"] = str(temp_dir)       # read by Gradio when the Blocks are built
    if getattr(args, "models_dir", None):
        settings.models_dirs = [str(d) for d in models_dirs]
    if getattr(args, "outputs_dir", None):
        settings.outputs_dir = str(outputs_dir)

    engine = Engine(models_dirs, outputs_dir)
    if configure_engine is not None:
        configure_engine(engine)
    try:
        demo = build_app(engine, settings, settings_path, notice, listen=listen, share=share, temp_dir=temp_dir)
        gr.set_static_paths([str(outputs_dir)])     # videos are served in place, never copied
        allowed, blocked = served_paths(outputs_dir, models_dirs, settings_path)
        guard = serving.Guard(demo.wan_context.policy, demo.wan_context.jobs, local_only=not (listen or share))
        from starlette.middleware import Middleware

        if credentials and generated:
            print("\n" + "=" * 72)
            print("This app is reachable from other machines, so it needs a password.")
            print(f"  user: {credentials[0]}\n  password: {credentials[1]}")
            print(f"(generated for this run and printed only here; use --auth-file FILE or {AUTH_ENV}=USER:PASS "
                  "to choose your own)")
            print("=" * 72 + "\n", flush=True)
        if why:
            print("\n" + "!" * 72 + f"\nPort {wanted} is taken: {why}.\nServing on port {port} instead: "
                  f"http://127.0.0.1:{port}\n" + "!" * 72 + "\n", flush=True)
        if listen:
            print(f"Listening on all interfaces, port {port}: http://<this-machine's-address>:{port}", flush=True)
        try:
            demo.launch(
                server_name=host, server_port=port, share=share, auth=credentials,
                auth_message=f"{PRODUCT}: enter the user and password set for this app.",
                inbrowser=not getattr(args, "no_browser", False), prevent_thread_lock=True, show_error=True,
                allowed_paths=allowed, blocked_paths=blocked, max_file_size=common.MAX_UPLOAD,
                theme=gr.themes.Soft(), css=common.CSS, ssr_mode=False, mcp_server=False, pwa=False,
                footer_links=["gradio"], run_history=False,
                app_kwargs={"middleware": [Middleware(serving.GuardMiddleware, guard=guard)]},
            )
        except OSError as e:
            print(f"error: port: {port} could not be opened ({e})\n  fix: choose another with --port",
                  file=sys.stderr)
            return 2
        if share and demo.share_url:
            from urllib.parse import urlsplit
            u = urlsplit(demo.share_url)
            guard.extra_origins.append(f"{u.scheme}://{u.netloc}")
        if share and not demo.share_url:
            print("The public share link could not be opened (no internet, or the tunnel is blocked). "
                  f"The app keeps serving at http://{'localhost' if host == '127.0.0.1' else host}:{port}"
                  + (" on your network" if host == "0.0.0.0" else "") + ", password protected.", flush=True)
        print(f"{PRODUCT} is running: http://127.0.0.1:{port}  (Ctrl+C to stop)", flush=True)
        try:
            demo.block_thread()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            demo.close()
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return 0
