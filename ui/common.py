"""What every tab shares: the app context, running an engine stream off the request thread, Stop, and the
small HTML pieces (progress bar, expert badge) that the tabs stream to the page.

The UI only consumes the engine's public event stream (wan_app.events); nothing here reaches into the
engine's loaded models.
"""
from __future__ import annotations

import html
import logging
import os
import queue
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from wan_app import catalog, events
from wan_app.catalog import ModelSpec
from wan_app.errors import UserError
from wan_app.settings import Settings

log = logging.getLogger(__name__)

# The id shared by every event that runs the GPU: with concurrency_limit=1 on it, one job runs at a time
# and the rest wait in Gradio's queue, which shows each browser its position.
GPU = "gpu"

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
MAX_UPLOAD_BYTES = 2 * 1024**3
MAX_UPLOAD = "2gb"            # the same limit, for gr.Blocks.launch(max_file_size=...)


@dataclass
class AppContext:
    """What the tabs share. `settings_path` None means the settings are not persisted (tests)."""
    engine: object                       # wan_app.engine.Engine
    settings: Settings
    settings_path: Path | None = None
    settings_notice: str | None = None
    stops: "Stops" = field(default_factory=lambda: Stops())

    @property
    def outputs_dir(self) -> Path:
        return Path(self.engine.outputs_dir)

    @property
    def models_dir(self) -> Path:
        """The folder new files (downloads, tiny demo models) are written to: the first models folder."""
        return Path(self.engine.models_dirs[0])


# ---------------------------------------------------------------------------------------------- Stop
class Stops:
    """One cancel event per browser session. Generate first *arms* a fresh event (instantly, outside the
    GPU queue), so a Stop pressed while the job still waits in the queue is not lost: the job sees the
    event set when its turn comes and ends without loading anything."""

    def __init__(self):
        self._lock = threading.Lock()
        self._armed: dict[str, threading.Event] = {}

    def arm(self, session: str) -> threading.Event:
        with self._lock:
            ev = threading.Event()
            self._armed[session] = ev
            return ev

    def take(self, session: str) -> threading.Event:
        """The event for the run that starts now: the armed one, or a fresh one (API callers skip arm)."""
        with self._lock:
            ev = self._armed.get(session)
            if ev is None or getattr(ev, "used", False):
                ev = threading.Event()
                self._armed[session] = ev
            ev.used = True
            return ev

    def stop(self, session: str) -> bool:
        with self._lock:
            ev = self._armed.get(session)
        if ev is None or getattr(ev, "finished", False):
            return False
        ev.set()
        return True

    @staticmethod
    def finish(ev: threading.Event) -> None:
        ev.finished = True


def session_of(request) -> str:
    return getattr(request, "session_hash", None) or "default"


# ---------------------------------------------------------------------------------------------- streams
_DONE = object()


def stream_in_thread(make_stream: Callable[[], Iterator[events.Event]], cancel: threading.Event
                     ) -> Iterator[events.Event]:
    """Iterate an engine stream in its own thread and hand the events over a queue.

    Why not iterate it directly in the Gradio handler: when a browser goes away Gradio stops pulling from
    the handler, which would leave the engine generator suspended mid-step holding its lock. Here the
    engine thread owns the stream; if the handler is abandoned, `finally` sets the cancel event and the
    engine ends by itself at the next step boundary, releasing the GPU for the next job in the queue."""
    q: queue.Queue = queue.Queue()

    def work():
        try:
            for ev in make_stream():
                q.put(ev)
        except Exception as e:  # noqa: BLE001 - the page must get a message, not a dead spinner
            log.exception("engine stream failed")
            q.put(events.Failed(f"{type(e).__name__}: {e}", "see the console log for details"))
        finally:
            q.put(_DONE)

    threading.Thread(target=work, name="engine-run", daemon=True).start()
    try:
        while True:
            ev = q.get()
            if ev is _DONE:
                return
            yield ev
    finally:
        cancel.set()


# ---------------------------------------------------------------------------------------------- models
def model_status(engine, refresh: bool = False):
    """Inventory status of every non-tiny model plus the tiny ones that are present."""
    try:
        statuses = engine.inventory(refresh=refresh).status()
    except Exception as e:  # noqa: BLE001 - an unreadable folder must not take the page down
        log.exception("scanning the models folders failed")
        return [], f"Scanning the models folders failed: {e}"
    return [s for s in statuses if s.runnable or not s.spec.tiny], None


def runnable_choices(statuses) -> list[tuple[str, str]]:
    return [(s.spec.name, s.spec.id) for s in statuses if s.runnable]


def peak_text(p) -> str:
    """The plan's estimated peaks; a CPU plan has no GPU figure to give."""
    ram = f"{p.est_ram_gb:.1f} GB RAM"
    return ram if p.device == "cpu" else f"{p.est_vram_gb:.1f} GB GPU, {ram}"


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


# ---------------------------------------------------------------------------------------------- plans
def plan_for(engine, spec: ModelSpec, width: int, height: int, frames: int):
    """(plan, None) or (None, why not). The planner is pure; this never loads anything."""
    try:
        from wan_app import planner
    except ImportError as e:
        return None, f"The memory planner is not available in this version ({e})."
    try:
        return planner.plan(engine.hardware, spec, width, height, frames, engine.overrides), None
    except UserError as e:
        return None, f"{e.field}: {e.problem}" + (f" — {e.fix}" if e.fix else "")
    except Exception as e:  # noqa: BLE001
        log.exception("planning failed")
        return None, f"Planning failed: {type(e).__name__}: {e}"


def frames_limit(engine, spec: ModelSpec, width: int, height: int) -> tuple[int, str]:
    """The most frames one clip may have at this size, and a sentence saying why."""
    p, err = plan_for(engine, spec, width, height, spec.frames)
    trained = f"{spec.name} is trained on {spec.frames} frames; longer videos are made on the Extend tab."
    if p is None:
        return spec.frames, f"{trained} ({err})"
    if p.max_frames >= spec.frames:
        return spec.frames, f"{trained} This machine fits up to {p.max_frames} frames at {width}x{height}."
    return max(1, p.max_frames), (f"At {width}x{height} this machine fits at most {p.max_frames} frames "
                                  f"(memory plan: {peak_text(p)} "
                                  f"estimated). Lower the size for more frames, or use Extend.")


def snap_frames(frames: int, limit: int) -> int:
    frames = max(1, min(int(frames), limit))
    return (frames - 1) // 4 * 4 + 1


def size_label(w: int, h: int) -> str:
    return f"{w}x{h}"


def size_choices(spec: ModelSpec) -> list[str]:
    return [size_label(w, h) for w, h in spec.sizes]


def spec_or_none(model_id: str | None) -> ModelSpec | None:
    return catalog.MODELS.get(model_id) if model_id else None


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


# ---------------------------------------------------------------------------------------------- HTML
def preview_image(frames: np.ndarray, height: int = 240, max_frames: int = 4) -> np.ndarray:
    """A contact sheet of up to `max_frames` evenly spaced preview frames, enlarged to `height` px:
    previews are at latent resolution (1/8 or 1/16 of the video), too small to see otherwise."""
    f = np.asarray(frames)
    if f.ndim == 3:
        f = f[None]
    idx = np.unique(np.linspace(0, len(f) - 1, min(max_frames, len(f))).round().astype(int))
    sheet = np.concatenate(list(f[idx]), axis=1)
    scale = max(1, round(height / sheet.shape[0]))
    import cv2
    return cv2.resize(sheet, (sheet.shape[1] * scale, sheet.shape[0] * scale),
                      interpolation=cv2.INTER_NEAREST if scale >= 4 else cv2.INTER_LINEAR)


def _fmt_eta(s: float | None) -> str:
    if s is None:
        return ""
    s = int(round(s))
    return f"{s // 60}:{s % 60:02d} left" if s >= 60 else f"{s}s left"


PHASES = {"load": "Loading the model", "encode": "Encoding the prompt", "sample": "Denoising",
          "decode": "Decoding the video", "write": "Writing the mp4", "queued": "Waiting",
          "done": "Done", "stopped": "Stopped", "failed": "Failed", "idle": "Ready"}


def progress_html(phase: str, step: int = 0, total: int = 0, eta_s: float | None = None, message: str = "",
                  window: int | None = None, windows: int | None = None) -> str:
    frac = step / total if total else (1.0 if phase == "done" else 0.0)
    title = PHASES.get(phase, phase.capitalize())
    parts = [title]
    if window is not None and windows:
        parts.append(f"window {window + 1}/{windows}")
    if total:
        parts.append(f"step {step}/{total}")
    eta = _fmt_eta(eta_s) if phase == "sample" else ""
    if eta:
        parts.append(eta)
    msg = html.escape(message) if message and phase != "sample" else ""
    return (f'<div class="wan-progress" data-phase="{phase}" data-step="{step}" data-total="{total}">'
            f'<div class="wan-progress-text">{html.escape(" · ".join(parts))}'
            f'{" — " + msg if msg else ""}</div>'
            f'<div class="wan-bar"><div class="wan-bar-fill wan-{phase}" style="width:{frac * 100:.1f}%">'
            f'</div></div></div>')


def expert_badge_html(expert: str | None, switched_at: int | None = None, seconds: float | None = None) -> str:
    """A14B: which expert runs now. `switched_at` is the 0-based step the low-noise expert took over."""
    if not expert:
        return '<div class="wan-expert" data-expert=""></div>'
    label = "High-noise expert (layout and motion)" if expert == "high" else "Low-noise expert (detail)"
    note = ""
    if switched_at is not None:
        note = f" · switched at step {switched_at + 1}"
        if seconds is not None:
            note += f" ({seconds:.1f}s to swap weights)"
    data_switch = "" if switched_at is None else str(switched_at)
    return (f'<div class="wan-expert wan-expert-{expert}" data-expert="{expert}" data-switch-step="{data_switch}">'
            f'<span class="wan-expert-dot"></span>{html.escape(label + note)}</div>')


def message_html(kind: str, text: str, hint: str = "") -> str:
    return (f'<div class="wan-msg wan-msg-{kind}">{html.escape(text)}'
            + (f'<div class="wan-hint">{html.escape(hint)}</div>' if hint else "") + "</div>")


CSS = """
.wan-progress { font-size: 0.95rem; }
.wan-progress-text { margin-bottom: 6px; font-weight: 600; }
.wan-bar { height: 10px; border-radius: 5px; background: var(--neutral-200); overflow: hidden; }
.dark .wan-bar { background: var(--neutral-700); }
.wan-bar-fill { height: 100%; background: var(--color-accent); transition: width 0.2s; }
.wan-bar-fill.wan-done { background: #16a34a; }
.wan-bar-fill.wan-stopped, .wan-bar-fill.wan-failed { background: #dc2626; }
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
.wan-notice { border-left: 4px solid #f59e0b; padding: 8px 12px; background: #fffbeb; color: #78350f; }
.wan-reasons { font-size: 0.9rem; }
"""
