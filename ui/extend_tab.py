"""The Extend tab: long videos made window by window (wan_app.longvideo), continuing a prompt or an existing
video, and resuming a job that was stopped or crashed. Without wan_app.longvideo the tab says so plainly."""
from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from wan_app import catalog, events, outputs
from wan_app.catalog import DEFAULT_NEGATIVE_PROMPT
from wan_app.errors import UserError
from wan_app.request import MAX_SEED, Request, parse_size

from . import common
from .common import GPU, AppContext

log = logging.getLogger(__name__)

MAX_TOTAL_FRAMES = 1001


def load_longvideo():
    """The module, or None with the reason when it is not part of this version yet."""
    try:
        from wan_app import longvideo
        for name in ("LongRequest", "run_long", "resume_long", "list_resumable"):
            getattr(longvideo, name)
        return longvideo, None
    except (ImportError, AttributeError) as e:
        return None, str(e)


class ExtendTab:
    def __init__(self, ctx: AppContext, t2v):
        self.ctx = ctx
        self.t2v = t2v
        self.lv, why = load_longvideo()
        if self.lv is None:
            gr.Markdown("### Extend is not available yet\nLong videos (window by window, continuing a video, "
                        "resuming) need the `wan_app.longvideo` module, which is not part of this version "
                        f"(`{why}`). Text to Video works as usual.", elem_id="wan-extend-unavailable")
            return
        self.build()

    def build(self) -> None:
        t = self.t2v
        gr.Markdown("Make videos longer than a model's training length, window by window: each window "
                    "continues the motion of the last frames of the previous one. Write one prompt per line "
                    "to give each window its own prompt. Every finished window is saved, so a stopped or "
                    "crashed job can be resumed below.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=360):
                self.model = gr.Dropdown(t.model.choices, value=t.model.value, label="Model")
                self.prompt = gr.Textbox(label="Prompt (one line per window, the last line repeats)", lines=4,
                                         elem_id="wan-extend-prompt")
                with gr.Accordion("Negative prompt (the official default is prefilled)", open=False):
                    self.negative = gr.Textbox(label="Negative prompt", lines=3, show_label=False,
                                               value=DEFAULT_NEGATIVE_PROMPT)
                with gr.Row():
                    self.size = gr.Dropdown(t.size.choices, value=t.size.value, label="Size")
                    self.total = gr.Slider(5, MAX_TOTAL_FRAMES, value=161, step=4, label="Total frames (continuing a video: frames to add)")
                with gr.Row():
                    self.window = gr.Number(0, precision=0, minimum=0, label="Frames per window (0 = auto)")
                    self.overlap = gr.Number(0, precision=0, minimum=0, label="Overlap frames, 4m+1 (0 = auto)")
                    self.color = gr.Slider(0, 1, value=1.0, step=0.05, label="Color drift correction")
                with gr.Accordion("Continue a video instead of starting from the prompt", open=False):
                    self.upload = gr.File(label="Upload a video (mp4, webm, mov, mkv, avi; at most 2 GB)",
                                          file_types=list(common.VIDEO_EXTENSIONS), type="filepath")
                    self.from_output = gr.Dropdown(self.output_choices(), value=None,
                                                   label="…or one of your outputs")
                with gr.Row():
                    self.seed_mode = gr.Radio(["random", "fixed"], value="random", label="Seed")
                    self.seed = gr.Number(42, precision=0, minimum=0, maximum=MAX_SEED, label="Seed value")
                with gr.Row():
                    self.go = gr.Button("Generate long video", variant="primary", elem_id="wan-extend-go")
                    self.stop_btn = gr.Button("Stop", variant="stop")
            with gr.Column(scale=6, min_width=360):
                self.status = gr.HTML(common.progress_html("idle"))
                self.badge = gr.HTML(common.expert_badge_html(None))
                self.preview = gr.Image(label="Live preview", interactive=False, height=240, format="png")
                self.video = gr.Video(label="Video so far", interactive=False, height=320)
                gr.Markdown("### Unfinished jobs")
                with gr.Row():
                    self.jobs = gr.Dropdown(self.job_choices(), label="Stopped or crashed jobs", scale=4)
                    self.jobs_refresh = gr.Button("Refresh", size="sm", scale=1)
                self.resume_btn = gr.Button("Resume this job")
        self.wire()

    # ------------------------------------------------------------------------------------------ helpers
    def output_choices(self):
        return [(f"{it.path.parent.name}/{it.path.name}", str(it.path))
                for it in outputs.list_outputs(self.ctx.outputs_dir, limit=50, with_metadata=False)]

    def job_choices(self):
        try:
            jobs = self.lv.list_resumable(self.ctx.outputs_dir)
        except Exception as e:  # noqa: BLE001
            log.warning("listing resumable jobs failed: %s", e)
            return []
        return [(f"{(j.prompt or '')[:50]} — {j.frames_done}/{j.frames_total} frames", str(j.path)) for j in jobs]

    def wire(self) -> None:
        run_outputs = [self.status, self.badge, self.preview, self.video]
        inputs = [self.model, self.prompt, self.negative, self.size, self.total, self.window, self.overlap,
                  self.color, self.upload, self.from_output, self.seed_mode, self.seed]
        # the Text to Video tab owns install/rescan; keep this picker's list in step with it
        self.t2v.model.change(self.sync_models, [self.model], [self.model], api_visibility="private")
        self.model.change(self.on_model, [self.model], [self.size], api_visibility="private")
        self.go.click(self.t2v.arm, None, None, queue=False, api_visibility="private").then(
            self.generate, inputs, run_outputs, concurrency_id=GPU, concurrency_limit=1, api_name="extend")
        self.stop_btn.click(self.t2v.stop, None, [self.status], queue=False, api_visibility="private")
        self.jobs_refresh.click(lambda: (gr.update(choices=self.job_choices()),
                                         gr.update(choices=self.output_choices())),
                                None, [self.jobs, self.from_output], api_visibility="private")
        self.resume_btn.click(self.t2v.arm, None, None, queue=False, api_visibility="private").then(
            self.resume, [self.jobs], run_outputs, concurrency_id=GPU, concurrency_limit=1, api_name="resume")

    def sync_models(self, current):
        choices = common.runnable_choices(common.model_status(self.ctx.engine)[0])
        ids = [c[1] for c in choices]
        return gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None))

    def on_model(self, model_id):
        spec = common.spec_or_none(model_id)
        if spec is None:
            return gr.skip()
        sizes = common.size_choices(spec)
        return gr.update(choices=sizes, value=sizes[0])

    def source_video(self, upload, from_output) -> Path | None:
        if upload:
            return common.check_video_upload(upload)
        if from_output:
            if not outputs.is_inside(from_output, self.ctx.outputs_dir):
                raise UserError("video", "that file is not one of your outputs", "pick it from the list")
            return Path(from_output)
        return None

    # ------------------------------------------------------------------------------------------ runs
    def generate(self, model, prompt, negative, size, total, window, overlap, color, upload, from_output,
                 seed_mode, seed, request: gr.Request):
        skip = gr.skip()
        cancel = self.ctx.stops.take(common.session_of(request))
        try:
            try:
                spec = catalog.get(model) if model else None
                if spec is None:
                    raise UserError("model", "no model is chosen", "install a model first")
                w, h = parse_size(size) if size else spec.default_size
                base = Request(model=model, prompt=prompt or "", negative_prompt=negative, width=w, height=h,
                               seed=None if seed_mode != "fixed" else int(seed))
                lreq = self.lv.LongRequest(base=base, total_frames=int(total), window=int(window) or None,
                                           overlap=int(overlap) or None, color_match=float(color),
                                           input_video=self.source_video(upload, from_output))
            except UserError as e:
                yield common.message_html("error", f"{e.field}: {e.problem}", e.fix), skip, skip, skip
                return
            if cancel.is_set():
                yield common.progress_html("stopped", message="stopped before it started"), skip, skip, skip
                return
            yield from self.follow(lambda: self.lv.run_long(self.ctx.engine, lreq, cancel=cancel), cancel,
                                   spec.experts == 2)
        finally:
            common.Stops.finish(cancel)

    def resume(self, job, request: gr.Request):
        skip = gr.skip()
        cancel = self.ctx.stops.take(common.session_of(request))
        try:
            if not job or not outputs.is_inside(job, self.ctx.outputs_dir):
                yield common.message_html("error", "Choose an unfinished job first."), skip, skip, skip
                return
            yield from self.follow(lambda: self.lv.resume_long(self.ctx.engine, Path(job), cancel=cancel),
                                   cancel, False)
        finally:
            common.Stops.finish(cancel)

    def follow(self, make_stream, cancel, a14b: bool):
        skip = gr.skip()
        expert = "high" if a14b else None
        switched = switch_s = None
        win = wins = None
        yield common.progress_html("load", message="preparing"), common.expert_badge_html(expert), None, None
        for ev in common.stream_in_thread(make_stream, cancel):
            if isinstance(ev, events.Progress):
                win, wins = ev.window, ev.windows
                yield common.progress_html(ev.phase, ev.step, ev.total, ev.eta_s, ev.message, win, wins), skip, skip, skip
            elif isinstance(ev, events.Preview):
                if ev.expert and ev.expert != expert:
                    expert, switched, switch_s = ev.expert, None, None   # a new window starts high again
                yield (common.progress_html("sample", ev.step, ev.total, window=ev.window, windows=wins),
                       common.expert_badge_html(expert, switched, switch_s), common.preview_image(ev.frames), skip)
            elif isinstance(ev, events.ExpertSwitch):
                expert, switched, switch_s = ev.to_expert, ev.step, ev.seconds
                yield skip, common.expert_badge_html(expert, switched, switch_s), skip, skip
            elif isinstance(ev, events.WindowDone):
                yield (common.progress_html("sample", ev.window + 1, ev.windows,
                                            message=f"{ev.frames_total} frames so far"), skip, skip, str(ev.path))
            elif isinstance(ev, events.Notice):
                gr.Info(ev.message)
            elif isinstance(ev, events.Finished):
                yield common.progress_html("done", message=f"{ev.seconds:.1f}s"), skip, skip, str(ev.path)
            elif isinstance(ev, events.Cancelled):
                where = f" The finished part is kept: {ev.path}" if ev.path else ""
                yield (common.progress_html("stopped", message=ev.message + where), skip, skip,
                       str(ev.path) if ev.path else skip)
            elif isinstance(ev, events.Failed):
                yield common.message_html("error", ev.message, ev.hint), skip, skip, skip
