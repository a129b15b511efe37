"""One renderer for the engine's event stream, shared by Text to Video, Image to Video and Extend.

`RunView` owns the output column of a tab (status line, notices, expert badge, live preview, video, the
plan of the run) and the error box beside Generate; `RunView.render(stream)` turns engine events into
dict updates of those components. The status line keeps a steady whole-job ETA (the engine's estimate,
counted down between its updates) and never repeats itself ("Encoding the prompt", not "Encoding the
prompt — encoding the prompt").
"""
from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import gradio as gr
import numpy as np

from wan_app import events

PHASES = {"queued": "Queued", "load": "Loading the model", "encode": "Encoding the prompt",
          "sample": "Denoising", "decode": "Decoding the video", "write": "Writing the mp4",
          "done": "Done", "stopped": "Stopped", "stopping": "Stopping", "failed": "Failed", "idle": "Ready"}
FINAL = ("done", "stopped", "failed", "idle")
_WINDOW_PREFIX = re.compile(r"^\s*window\s+\d+\s*/\s*\d+\s*[:·-]\s*", re.I)


# ---------------------------------------------------------------------------------------------- pieces
def fmt_eta(s: float | None) -> str:
    if s is None:
        return ""
    s = max(0, int(round(s)))
    return f"about {s // 60}:{s % 60:02d} left" if s >= 60 else f"about {s}s left"


def _label(phase: str, message: str) -> str:
    """The phase's title, or the engine's message when it says the same thing more precisely."""
    title = PHASES.get(phase, phase.capitalize())
    msg = _WINDOW_PREFIX.sub("", (message or "").strip())
    if not msg or phase in ("sample", "queued") or phase in FINAL:
        return title
    first = title.split()[0].lower()
    if msg.lower().startswith(first) or msg.lower() == title.lower():
        return msg[0].upper() + msg[1:]
    if phase in ("encode", "write") and msg.lower().startswith(("encoding", "appending", "writing",
                                                                 "finishing")):
        return msg[0].upper() + msg[1:]
    return f"{title}: {msg}"


def status_html(phase: str, *, step: int = 0, total: int = 0, window: int | None = None,
                windows: int | None = None, eta_s: float | None = None, message: str = "",
                text: str | None = None) -> str:
    """The status line. `text` replaces the generated one (queue positions, outcomes)."""
    parts = []
    if windows and window is not None and phase not in FINAL:
        parts.append(f"Window {window + 1}/{windows}")
    parts.append(text if text is not None else _label(phase, message))
    if phase == "sample" and total:
        parts.append(f"step {step}/{total}")
    eta = fmt_eta(eta_s) if phase not in FINAL and phase != "queued" else ""
    if eta:
        parts.append(eta)
    if phase == "done":
        frac = 1.0
    elif windows:                       # a long job: the bar covers all its windows
        frac = ((window or 0) + (step / total if total else 0.0)) / windows
    else:
        frac = step / total if total else 0.0
    line = " · ".join(parts)
    return (f'<div class="wan-progress" data-phase="{phase}" data-step="{step}" data-total="{total}" '
            f'data-window="{"" if window is None else window}" data-windows="{windows or ""}" '
            f'data-eta="{"" if eta_s is None else round(eta_s)}">'
            f'<div class="wan-progress-text">{html.escape(line)}</div>'
            f'<div class="wan-bar"><div class="wan-bar-fill wan-{phase}" style="width:{frac * 100:.1f}%">'
            f'</div></div></div>')


def message_html(kind: str, text: str, hint: str = "") -> str:
    return (f'<div class="wan-msg wan-msg-{kind}">{html.escape(text)}'
            + (f'<div class="wan-hint">{html.escape(hint)}</div>' if hint else "") + "</div>")


EMPTY = '<div class="wan-empty"></div>'        # CSS folds a box holding only this (no gap left)


def notices_html(notices: list[str]) -> str:
    return "".join(f'<div class="wan-notice">{html.escape(n)}</div>' for n in notices) or EMPTY


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


def peak_text(p) -> str:
    """The plan's estimated peaks; a CPU plan has no GPU figure to give."""
    ram = f"{p.est_ram_gb:.1f} GB RAM"
    return ram if p.device == "cpu" else f"{p.est_vram_gb:.1f} GB GPU, {ram}"


def plan_html(p, title: str = "", experts: int = 1) -> str:
    """A plan as a table of its decisions and the reasons for them."""
    rows = [("Device", p.device), ("Compute dtype", p.compute_dtype), ("Transformer weights", p.weight_dtype),
            ("Blocks swapped to CPU", f"{p.blocks_swapped} of {p.blocks_total}"),
            ("Text encoder", f"{p.text_encoder_device} ({p.text_encoder_dtype})"),
            ("Attention", p.attention_backend), ("VAE tiling", "on" if p.vae_tiling else "off"),
            ("Blocks compiled (torch.compile)", "on" if p.compiled else "off"),
            ("Most frames at this size", str(p.max_frames)), ("Estimated peak", peak_text(p))]
    if experts == 2:
        rows.append(("A14B experts in RAM", p.experts_resident))
    forced = sorted(getattr(p, "forced", None) or [])
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in p.reasons)
    blocker = getattr(p, "blocker", None)
    return ((f"<p class='wan-plan-title'>{html.escape(title)}</p>" if title else "")
            + (message_html("error", blocker.get("problem", ""), blocker.get("fix", "")) if blocker else "")
            + f"<div class='wan-plan' data-max-frames='{p.max_frames}' data-blocks='{p.blocks_swapped}'>"
            f"<table>{table}</table>"
            + (f"<p>Forced in Settings: {html.escape(', '.join(forced))}</p>" if forced else "")
            + f"<p><b>Why</b></p><ul class='wan-reasons'>{reasons}</ul></div>")


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


# ---------------------------------------------------------------------------------------------- the view
@dataclass
class _Run:
    phase: str = "queued"
    step: int = 0
    total: int = 0
    window: int | None = None
    windows: int | None = None
    eta: tuple[float, float] | None = None        # (seconds left, when it was said)
    expert: str | None = None
    switched_at: int | None = None
    switch_s: float | None = None
    notices: list[str] = field(default_factory=list)

    def eta_now(self) -> float | None:
        if self.eta is None:
            return None
        left, said = self.eta
        return max(0.0, left - (time.monotonic() - said))

    def status(self, message: str = "") -> str:
        return status_html(self.phase, step=self.step, total=self.total, window=self.window,
                           windows=self.windows, eta_s=self.eta_now(), message=message)


class RunView:
    """The output column of a tab. Build it inside the column; `error` is the box beside Generate."""

    def __init__(self, prefix: str, *, video_label: str, preview_label: str, with_plan: bool = True,
                 error: gr.HTML | None = None):
        self.prefix = prefix
        self.error = error
        self.status = gr.HTML(status_html("idle"), elem_id=f"{prefix}-status")
        self.notices = gr.HTML(EMPTY, elem_id=f"{prefix}-notices", elem_classes=["wan-fold"])
        self.badge = gr.HTML(expert_badge_html(None), elem_id=f"{prefix}-badge", elem_classes=["wan-fold"])
        self.preview = gr.Image(label=preview_label, interactive=False, height=240, format="png",
                                elem_id=f"{prefix}-preview")
        self.video = gr.Video(label=video_label, interactive=False, height=300, autoplay=True, loop=True,
                              elem_id=f"{prefix}-video")
        self.plan = None
        if with_plan:
            with gr.Accordion("Memory plan of this run", open=False):
                self.plan = gr.HTML("<p>The plan appears when a run starts.</p>", elem_id=f"{prefix}-run-plan")

    @staticmethod
    def error_box(prefix: str) -> gr.HTML:
        """The box for errors, created where it belongs (right under Generate) and given to the view."""
        return gr.HTML(EMPTY, elem_id=f"{prefix}-error", elem_classes=["wan-error-box", "wan-fold"])

    @property
    def components(self) -> list:
        return [c for c in (self.status, self.notices, self.badge, self.preview, self.video, self.plan,
                            self.error) if c is not None]

    # ---- pieces a handler yields ----------------------------------------------------------------
    def starting(self, a14b: bool) -> dict:
        out = {self.status: status_html("load", text="Starting"), self.notices: EMPTY,
               self.badge: expert_badge_html("high" if a14b else None), self.preview: None, self.video: None}
        if self.error is not None:
            out[self.error] = EMPTY
        return out

    def failed(self, text: str, hint: str = "") -> dict:
        out = {self.status: status_html("failed", text=f"Failed: {text}")}
        if self.error is not None:
            out[self.error] = message_html("error", text, hint)
        return out

    def stopped(self, text: str) -> dict:
        return {self.status: status_html("stopped", text=text)}

    # ---- the stream -----------------------------------------------------------------------------
    def render(self, stream: Iterator[events.Event], a14b: bool = False, *,
               on_finished: Callable[[events.Finished], dict] | None = None,
               on_window: Callable[[events.WindowDone], dict] | None = None,
               serve: Callable[[object], object] = lambda p: p) -> Iterator[dict]:
        """`serve(path)` gives the path the page may show (None: not one of the app's own videos)."""
        run = _Run(expert="high" if a14b else None)
        shown = lambda p: None if p is None or serve(p) is None else str(serve(p))  # noqa: E731
        for ev in stream:
            if isinstance(ev, events.PlanReady):
                if self.plan is not None:
                    yield {self.plan: plan_html(ev.plan, "The plan this run uses", 2 if a14b else 1)}
            elif isinstance(ev, events.Progress):
                run.phase = ev.phase
                run.step, run.total = (ev.step, ev.total) if ev.phase == "sample" else (0, 0)
                if ev.windows:
                    run.window, run.windows = ev.window, ev.windows
                if ev.eta_s is not None:
                    run.eta = (float(ev.eta_s), time.monotonic())
                yield {self.status: run.status(ev.message)}
            elif isinstance(ev, events.Preview):
                if ev.expert and ev.expert != run.expert and ev.step == 1:
                    run.switched_at = run.switch_s = None      # a new window starts with the high expert
                if ev.expert:
                    run.expert = ev.expert
                yield {self.preview: preview_image(ev.frames),
                       self.badge: expert_badge_html(run.expert, run.switched_at, run.switch_s)}
            elif isinstance(ev, events.ExpertSwitch):
                run.expert, run.switched_at, run.switch_s = ev.to_expert, ev.step, ev.seconds
                yield {self.badge: expert_badge_html(run.expert, run.switched_at, run.switch_s)}
            elif isinstance(ev, events.Notice):
                run.notices.append(ev.message)
                yield {self.notices: notices_html(run.notices)}
            elif isinstance(ev, events.WindowDone):
                run.phase, run.step, run.total = "write", 0, 0
                run.window, run.windows = ev.window, ev.windows
                out = {self.status: status_html(
                    "write", window=ev.window, windows=ev.windows, eta_s=run.eta_now(),
                    text=f"done, {ev.frames_total} frames so far"),
                       self.video: shown(ev.path)}
                if on_window:
                    out.update(on_window(ev))
                yield out
            elif isinstance(ev, events.Finished):
                out = {self.status: status_html("done", text=f"Done in {ev.seconds:.1f}s"),
                       self.video: shown(ev.path)}
                if on_finished:
                    out.update(on_finished(ev))
                yield out
            elif isinstance(ev, events.Cancelled):
                where = f" The finished part is kept: {ev.path.name}" if ev.path else ""
                out = {self.status: status_html("stopped", text=(ev.message or "Stopped.") + where)}
                if ev.path and shown(ev.path):
                    out[self.video] = shown(ev.path)
                yield out
            elif isinstance(ev, events.Failed):
                yield self.failed(ev.message, ev.hint)
