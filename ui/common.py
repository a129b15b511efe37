"""What every tab shares: the app context, the page-level state of a visit, the model list, folder and
upload checks, and the CSS. Engine calls go through ui.engine_api; event rendering is ui.render."""
from __future__ import annotations

import html
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from wan_app import catalog
from wan_app.catalog import ModelSpec
from wan_app.errors import UserError
from wan_app.plan_types import Overrides
from wan_app.settings import Settings, validate as validate_settings

from . import engine_api
from .jobs import Jobs
from .render import peak_text
from .serving import Policy

log = logging.getLogger(__name__)

PRODUCT = "Wan Studio"

# The id shared by every event that runs the GPU: with concurrency_limit=1 on it, one job runs at a time
# and the rest wait in Gradio's queue. Downloads and demo-model writes have their own queue.
GPU = "gpu"
DOWNLOADS = "downloads"
LIGHT = "light"

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
MAX_UPLOAD_BYTES = 2 * 1024**3
MAX_UPLOAD = "2gb"            # the same limit, for gr.Blocks.launch(max_file_size=...)
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class AppContext:
    """What the tabs share. `settings_path` None means the settings are not persisted (tests).
    `share` / `listen`: how far the app is reachable, which decides who may change folders."""
    engine: object                       # wan_app.engine.Engine
    settings: Settings
    settings_path: Path | None = None
    settings_notice: str | None = None
    jobs: Jobs = field(default_factory=Jobs)
    policy: Policy | None = None
    listen: bool = False
    share: bool = False

    def __post_init__(self):
        if self.policy is None:
            self.policy = Policy(self.outputs_dir)

    @property
    def outputs_dir(self) -> Path:
        return Path(self.engine.outputs_dir)

    @property
    def models_dir(self) -> Path:
        """The folder new files (downloads, tiny demo models) are written to: the first models folder."""
        return Path(self.engine.models_dirs[0])

    def saved_settings(self) -> Settings:
        """The settings file as it is now (read on every visit, never rewritten by reading)."""
        if self.settings_path is None or not self.settings_path.is_file():
            return self.settings
        try:
            data = json.loads(self.settings_path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError):
            return self.settings
        s, _ = validate_settings(data)
        return s

    def owner_at_machine(self, request) -> bool:
        """Whether this browser is the app's owner at this computer: the app is not shared, and the
        request comes from this computer. Through a share tunnel every request looks local, so a shared
        app has no owner session at all; folders are then set with --models-dir / --outputs-dir."""
        if self.share:
            return False
        if not self.listen:
            return True
        client = getattr(getattr(request, "client", None), "host", None)
        return client in LOOPBACK


def session_of(request) -> str:
    return getattr(request, "session_hash", None) or "default"


def overrides_of(d: dict | None) -> Overrides:
    fields = set(Overrides.__dataclass_fields__)
    return Overrides(**{k: v for k, v in (d or {}).items() if k in fields})


# ---------------------------------------------------------------------------------------------- models
def model_status(engine, refresh: bool = False, wanted=None):
    """(statuses of the models a tab offers: the non-tiny ones and the tiny ones present, a note about
    skipped files or None). `refresh` reads every header again (the Rescan button); otherwise the folders
    are as they are now, read again where they changed. `wanted(spec)` picks the tab's models; by default
    those that make a video from text (a model that needs an input image is Image to Video's)."""
    wanted = wanted or (lambda spec: not getattr(spec, "image_required", False))
    try:
        inv = engine_api.inventory(engine, refresh=refresh)
        statuses = inv.status()
    except Exception as e:  # noqa: BLE001 - an unreadable folder must not take the page down
        log.exception("scanning the models folders failed")
        return [], f"Scanning the models folders failed: {e}"
    problems = engine_api.inventory_problems(inv)
    note = ("Skipped in the model folders:\n" + "\n".join(f"- {p}" for p in problems)) if problems else None
    return [s for s in statuses if (s.runnable or not s.spec.tiny) and wanted(s.spec)], note


def runnable_choices(statuses) -> list[tuple[str, str]]:
    return [(s.spec.name, s.spec.id) for s in statuses if s.runnable]


def missing_markdown(statuses, models_dirs) -> str:
    """Which files each model still needs and where they go."""
    folders = ", ".join(f"`{d}`" for d in models_dirs)
    lines = []
    for s in statuses:
        if s.runnable:
            continue
        lines.append(f"\n**{s.spec.name}** (`{s.spec.id}`)\n")   # blank lines: a heading, not list text
        lines += [f"- {m.replace('<models>', str(models_dirs[0]))}" for m in s.missing]
    if not lines:
        return ""
    return (f"Models folder(s): {folders}. A ComfyUI `models` folder works as it is.\n\n" + "\n".join(lines))


def is_online(timeout: float = 1.5) -> bool:
    """Whether the Hugging Face Hub can be reached. HF_HUB_OFFLINE short-circuits without any network."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def spec_or_none(model_id: str | None) -> ModelSpec | None:
    return catalog.MODELS.get(model_id) if model_id else None


def size_label(w: int, h: int) -> str:
    return f"{w}x{h}"


def size_choices(spec: ModelSpec) -> list[str]:
    return [size_label(w, h) for w, h in spec.sizes]


def snap_frames(frames: int, limit: int) -> int:
    frames = max(1, min(int(frames), limit))
    return (frames - 1) // 4 * 4 + 1


def frames_limit(engine, spec: ModelSpec, width: int, height: int, overrides: Overrides | None = None
                 ) -> tuple[int, str]:
    """The most frames one clip may have at this size, and a sentence saying why."""
    trained = (f"Clips of up to {spec.frames} frames, {spec.name}'s training length. "
               "Longer videos: the Extend tab.")
    try:
        p = engine_api.plan_size(engine, spec, width, height, spec.frames, overrides)
    except UserError as e:
        return spec.frames, f"{trained} ({e.field}: {e.problem})"
    except Exception as e:  # noqa: BLE001
        log.exception("planning failed")
        return spec.frames, f"{trained} (planning failed: {e})"
    if p.max_frames >= spec.frames:
        return spec.frames, trained
    return max(1, p.max_frames), (f"At {width}x{height} this machine fits at most {p.max_frames} frames "
                                  f"(memory plan: {peak_text(p)} estimated). Lower the size for more "
                                  "frames, or use Extend.")


def hardware_text(hw) -> str:
    """The machine in plain lines. An attention kernel that did not run gets a short reason, not the
    exception text of the probe."""
    failures = dict(getattr(hw, "attention_failures", None) or {})
    try:
        from dataclasses import replace
        lines = replace(hw, attention_failures={}).describe().splitlines()
    except TypeError:                  # not a dataclass: keep its lines, minus the failure ones
        lines = [ln for ln in hw.describe().splitlines() if not ln.startswith(("Attention kernel ", " "))]
    for name, why in failures.items():
        lines.append(f"Attention kernel {name}: not available ({_short_reason(why)})")
    return "\n".join(lines)


def _short_reason(why: str) -> str:
    text = str(why or "").strip()
    if "No module named" in text or "ModuleNotFoundError" in text:
        return "not installed"
    if "CUDA" in text and ("not available" in text or "no GPU" in text.lower()):
        return "needs an NVIDIA GPU"
    if "No viable backend" in text:
        return "not supported on this device"
    first = text.splitlines()[0] if text else "it did not run here"
    first = first.split(": ", 1)[-1] if first.split(": ", 1)[0].endswith(("Error", "Exception")) else first
    return first if len(first) <= 80 else first[:77] + "…"


def user_error_text(e: UserError) -> str:
    return f"{e.field}: {e.problem}" + (f" — {e.fix}" if e.fix else "")


# ---------------------------------------------------------------------------------------------- folders
_SYSTEM = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/root", "/run", "/sbin",
           "/sys", "/usr", "/var", "/System", "/Library", "/Applications", "C:\\Windows", "C:\\Program Files",
           "C:\\Program Files (x86)", "C:\\ProgramData")


def check_outputs_folder(text: str, models_dirs) -> Path:
    """The outputs folder chosen in Settings, or UserError: a new folder, or one that holds nothing but
    what this app writes. Never a filesystem root, a home folder (or one that holds it), a system folder,
    or a models folder: whatever is in the outputs folder's day folders is served to the browser."""
    try:
        from wan_app.outputs import check_outputs_dir       # the engine's own rule, when it has one
    except ImportError:
        check_outputs_dir = None
    field_ = "outputs_dir"
    raw = (text or "").strip()
    if not raw:
        raise UserError(field_, "is empty", "give a folder for the videos, e.g. outputs")
    if check_outputs_dir is not None:
        return check_outputs_dir(raw, models_dirs=models_dirs)
    p = Path(os.path.realpath(Path(raw).expanduser()))
    home = Path(os.path.realpath(Path.home()))
    if p == Path(p.anchor):
        raise UserError(field_, f"{p} is the root of a drive", "choose a folder of its own, e.g. outputs")
    if p == home or p in home.parents:
        raise UserError(field_, f"{p} holds your home folder", "choose a folder of its own, e.g. ~/wan-outputs")
    for s in _SYSTEM:
        sp = Path(s)
        if p == sp or sp in p.parents:
            raise UserError(field_, f"{p} is a system folder", "choose a folder of its own, e.g. ~/wan-outputs")
    for d in models_dirs:
        m = Path(os.path.realpath(Path(d).expanduser()))
        if p == m or m in p.parents or p in m.parents:
            raise UserError(field_, f"{p} overlaps the models folder {m}", "keep videos and models apart")
    if p.exists():
        if not p.is_dir():
            raise UserError(field_, f"{p} is a file", "choose a folder")
        strangers = [c.name for c in p.iterdir()
                     if not (c.name.startswith(".") or (c.is_dir() and not c.is_symlink()
                                                        and _is_day(c.name)))]
        if strangers:
            raise UserError(field_, f"{p} already holds other files ({', '.join(sorted(strangers)[:3])})",
                            "choose a new or empty folder, or one this app made")
    return p


def _is_day(name: str) -> bool:
    from .serving import DAY_FOLDER
    return bool(DAY_FOLDER.match(name))


# ---------------------------------------------------------------------------------------------- uploads
_MAGIC = (
    (4, b"ftyp"),                 # mp4 / mov / m4v (ISO base media)
    (0, b"\x1a\x45\xdf\xa3"),     # webm / mkv (EBML)
    (8, b"AVI "),                 # avi (RIFF....AVI )
)


def check_video_upload(path: str | os.PathLike | None) -> Path:
    """An uploaded file must be a video by name *and* by content, and at most 2 GB. Raises UserError."""
    if not path:
        raise UserError("video", "no file was given", "upload a video or pick one of your outputs")
    p = Path(path)
    if p.suffix.lower() not in VIDEO_EXTENSIONS:
        raise UserError("video", f"'{p.name}' is not a video file",
                        "upload one of: " + ", ".join(VIDEO_EXTENSIONS))
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise UserError("video", f"'{p.name}' could not be read ({e.strerror})", "upload it again") from None
    if size > MAX_UPLOAD_BYTES:
        raise UserError("video", f"'{p.name}' is {size / 1024**3:.1f} GB", "upload a video of at most 2 GB")
    if not any(head[o:o + len(m)] == m for o, m in _MAGIC):
        raise UserError("video", f"'{p.name}' does not contain video data",
                        "upload an mp4, webm, mov, mkv or avi file that plays in a video player")
    return p


def escape(text: str) -> str:
    return html.escape(text)


CSS = """
.wan-progress { font-size: 0.95rem; }
.wan-progress-text { margin-bottom: 6px; font-weight: 600; }
.wan-bar { height: 10px; border-radius: 5px; background: var(--neutral-200); overflow: hidden; }
.dark .wan-bar { background: var(--neutral-700); }
.wan-bar-fill { height: 100%; background: var(--color-accent); transition: width 0.2s; }
.wan-bar-fill.wan-done { background: #16a34a; }
.wan-bar-fill.wan-stopped, .wan-bar-fill.wan-failed { background: #dc2626; }
.wan-progress[data-phase='failed'] .wan-progress-text { color: #b91c1c; }
.wan-expert { display: inline-flex; align-items: center; gap: 8px; padding: 4px 12px; border-radius: 999px;
              font-weight: 600; font-size: 0.9rem; }
.wan-expert:empty { display: none; }
.wan-expert-high { background: #fde68a; color: #78350f; }
.wan-expert-low { background: #bfdbfe; color: #1e3a8a; }
.wan-expert-dot { width: 10px; height: 10px; border-radius: 50%; background: currentColor; }
.wan-msg { padding: 8px 12px; border-radius: 8px; }
.wan-msg-error { background: #fee2e2; color: #7f1d1d; }
.wan-msg-ok { background: #dcfce7; color: #14532d; }
.wan-msg-info { background: var(--neutral-100); }
.dark .wan-msg-info { background: var(--neutral-800); }
.wan-hint { font-weight: normal; margin-top: 4px; }
.wan-notice { border-left: 4px solid #f59e0b; padding: 6px 12px; margin: 4px 0; background: #fffbeb;
              color: #78350f; }
.wan-reasons { font-size: 0.9rem; }
.wan-plan th { text-align: left; padding-right: 16px; }
#wan-header h2 { margin-bottom: 0; }
/* an empty notice, error or expert box takes no room (no gap in the column) */
.wan-fold:has(.wan-empty), .wan-fold:has(.wan-expert[data-expert=""]) { display: none !important; }
"""
