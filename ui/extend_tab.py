"""The Extend tab: long videos made window by window (wan_app.longvideo), continuing a prompt or an existing
video, and resuming a job that was stopped or crashed. Without long-video support the tab says so."""
from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from wan_app import catalog, outputs
from wan_app.errors import UserError
from wan_app.request import Request, parse_size

from . import common, engine_api
from .cache_setting import CacheSetting, plan_note
from .common import AppContext
from .generation_controls import INPUT_LABELS as CLIP_LABELS
from .generation_controls import JobChecks, chosen_model, negative_prompt, run_row, seed_of, seed_row
from .lora_picker import LoraPicker
from .render import RunView
from .runs import Page, Runner

log = logging.getLogger(__name__)

MAX_TOTAL_FRAMES = 1001
FIELD_INPUTS = {"model": "model", "prompt": "prompt", "negative_prompt": "negative", "size": "size",
                "width": "size", "height": "size", "frames": "total", "total_frames": "total",
                "window": "window", "overlap": "overlap", "color_match": "color", "video": "upload",
                "seed": "seed"}
INPUT_LABELS = {**CLIP_LABELS, "total": "Total frames", "window": "Frames per window", "overlap": "Overlap frames",
                "color": "Color drift correction", "upload": "Video to continue"}


class ExtendTab(JobChecks):
    FIELDS, LABELS = FIELD_INPUTS, INPUT_LABELS

    def __init__(self, ctx: AppContext, page: Page, t2v):
        self.ctx, self.page, self.t2v = ctx, page, t2v
        self.LongRequest = engine_api.long_request_type()
        self.available = self.LongRequest is not None
        if not self.available:
            gr.Markdown("### Extend is not available\nLong videos (window by window, continuing a video, "
                        "resuming) need `wan_app.longvideo`, which this version lacks. Text to Video works "
                        "as usual.", elem_id="wan-extend-unavailable")
            return
        self.build()

    def build(self) -> None:
        gr.Markdown("Make videos longer than a model's training length, window by window: each window "
                    "continues the motion of the last frames of the previous one. Write one prompt per line "
                    "to give each window its own prompt. Every finished window is saved, so a stopped or "
                    "crashed job can be resumed below.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=360):
                self.model = gr.Dropdown([], value=None, label="Model", elem_id="wan-extend-model",
                                         allow_custom_value=True)
                self.prompt = gr.Textbox(label="Prompt (one line per window, the last line repeats)", lines=3,
                                         elem_id="wan-extend-prompt")
                self.go, self.stop_btn, error = run_row("wan-extend", "Generate long video", "wan-extend-go")
                with gr.Row():
                    self.size = gr.Dropdown([], value=None, label="Size", elem_id="wan-extend-size",
                                            allow_custom_value=True)
                    self.total = gr.Slider(5, MAX_TOTAL_FRAMES, value=161, step=4, elem_id="wan-extend-total",
                                           label="Total frames", info="continuing a video: the frames to add")
                with gr.Row():
                    self.window = gr.Number(0, precision=0, label="Frames per window (0 = auto)")
                    self.overlap = gr.Number(0, precision=0, label="Overlap frames, 4m+1 (0 = auto)")
                    self.color = gr.Slider(0, 1, value=1.0, step=0.05, label="Color drift correction")
                self.negative = negative_prompt("wan-extend")
                with gr.Accordion("Continue a video instead of starting from the prompt", open=False):
                    self.upload = gr.File(label="Upload a video (mp4, webm, mov, mkv, avi; at most 2 GB)",
                                          file_types=list(common.VIDEO_EXTENSIONS), type="filepath")
                    self.from_output = gr.Dropdown([], value=None, label="…or one of your outputs",
                                                   allow_custom_value=True)
                self.seed_mode, self.seed = seed_row("wan-extend", "Seed value")
                with gr.Accordion("Step cache, LoRAs and few-step presets", open=False, elem_id="wan-extend-extras"):
                    self.cache = CacheSetting("wan-extend")
                    # no sampling fields here: a preset's steps, CFG, shift and solver come with it
                    self.loras = LoraPicker(self.ctx, "wan-extend")
            with gr.Column(scale=6, min_width=360):
                self.view = RunView("wan-extend", video_label="Video so far", preview_label="Live preview",
                                    error=error)
                gr.Markdown("### Unfinished jobs")
                with gr.Row():
                    self.jobs = gr.Dropdown([], label="Stopped or crashed jobs", scale=4, elem_id="wan-jobs",
                                            allow_custom_value=True)
                    self.jobs_refresh = gr.Button("Refresh", size="sm", scale=1)
                self.resume_btn = gr.Button("Resume this job", elem_id="wan-resume", interactive=False)
        self.wire()

    # ------------------------------------------------------------------------------------------ helpers
    def output_choices(self):
        return [(f"{p.parent.name}/{p.name}", str(p))
                for it in outputs.list_outputs(self.ctx.outputs_dir, limit=50, with_metadata=False)
                if (p := self.ctx.policy.video(it.path)) is not None]

    def job_choices(self):
        return [(f"{(j.prompt or '')[:50]} — {j.frames_done}/{j.frames_total} frames", str(j.path))
                for j in engine_api.list_resumable(self.ctx.outputs_dir)]

    def inputs(self) -> dict:
        return {"model": self.model, "prompt": self.prompt, "negative": self.negative, "size": self.size,
                "total": self.total, "window": self.window, "overlap": self.overlap, "color": self.color,
                "upload": self.upload, "from_output": self.from_output, "seed_mode": self.seed_mode,
                "seed": self.seed, **self.cache.inputs(), **self.loras.inputs()}

    def source_video(self, upload, from_output) -> Path | None:
        if upload:
            return common.check_video_upload(upload)
        if from_output:
            video = self.ctx.policy.video(from_output)
            if video is None:
                raise UserError("video", "that file is not one of your outputs", "pick it from the list")
            return video
        return None

    def build_request(self, v: dict):
        spec = chosen_model(v, "install a model first")
        w, h = parse_size(v["size"]) if v.get("size") else spec.default_size
        base = Request(model=spec.id, prompt=v.get("prompt") or "", negative_prompt=v.get("negative"),
                       width=w, height=h, seed=seed_of(v), **self.cache.fields(v))
        base = self.loras.apply(v, base)
        whole = lambda k: int(v.get(k) or 0) or None  # noqa: E731
        return self.LongRequest(base=base, total_frames=int(v.get("total") or 0), window=whole("window"),
                                overlap=whole("overlap"), color_match=float(v.get("color") or 0.0),
                                input_video=self.source_video(v.get("upload"), v.get("from_output")))

    def ready_ids(self) -> list[str]:
        return self.t2v.ready_ids()

    def check_resume(self, v: dict) -> dict:
        video = self.ctx.policy.video(v.get("job")) if v.get("job") else None
        if video is None or str(video) not in {p for _, p in self.job_choices()}:
            return {"job": "Choose one of the unfinished jobs first."}
        return {}

    # ------------------------------------------------------------------------------------------ events
    def wire(self) -> None:
        page = self.page
        outputs = self.view.components
        self.runner = Runner("extend", self.go, "Generate long video", self.view,
                             ready=lambda: bool(self.t2v.ready_ids()))
        # a stopped or failed job becomes resumable: the lists follow
        lists = (self.refresh_lists, None, [self.jobs, self.from_output, self.resume_btn])
        page.add_runner(self.runner, self.stop_btn, self.inputs(), outputs, self.check, self.generate,
                        api_name="extend", after=lists)
        self.resume_runner = Runner("resume", self.resume_btn, "Resume this job", self.view,
                                    ready=lambda: bool(self.job_choices()))
        page.add_runner(self.resume_runner, self.stop_btn, {"job": self.jobs}, outputs, self.check_resume,
                        self.resume, api_name="resume", after=lists)
        self.go.click(self.remember, [page.last, *self.inputs().values()], [page.last], queue=False,
                      show_progress="hidden", api_visibility="private")
        self.model.input(self.on_model, [self.model], [self.size, *self.extras_outputs()], show_progress="hidden",
                         api_visibility="private")
        self.loras.wire(self.model, {}, self.view.error)
        self.cache.wire(self.cache_note, [page.overrides, self.model, self.size, *self.cache.inputs().values()])
        self.jobs_refresh.click(self.refresh_lists, None, [self.jobs, self.from_output, self.resume_btn],
                                show_progress="hidden", api_name="unfinished_jobs")

    def extras(self, spec, prev: dict | None = None) -> dict:
        """The step cache and LoRA picker for `spec` (with `prev`, a saved request's choices)."""
        prev = prev or {}
        out = self.cache.for_model(spec, {"cache": prev.get("cache")})
        out.update(self.loras.for_model(spec, LoraPicker.from_values(prev), prev.get("preset")))
        return out

    def extras_outputs(self) -> list:
        return [*self.cache.outputs(), *self.loras.outputs()]

    def cache_note(self, overrides, model_id, size, kind, threshold) -> str:
        spec = common.spec_or_none(model_id)
        if spec is None:
            return ""
        try:
            w, h = parse_size(size) if size else spec.default_size
            req = Request(model=spec.id, prompt="-", width=w, height=h,
                          **self.cache.fields({"cache": kind, "cache_threshold": threshold}))
        except UserError as e:
            return f"{e.field}: {e.problem}"
        return plan_note(self.ctx.engine, req, overrides) + " (in each window)"

    def on_model(self, model_id):
        spec = common.spec_or_none(model_id)
        if spec is None:
            return {}
        sizes = common.size_choices(spec)
        return {self.size: gr.update(choices=sizes, value=sizes[0]), **self.extras(spec)}

    def refresh_lists(self, request: gr.Request = None):
        jobs = self.job_choices()
        busy = request is not None and self.ctx.jobs.active(common.session_of(request)) is not None
        return {self.jobs: gr.update(choices=jobs, value=jobs[0][1] if jobs else None),
                self.from_output: gr.update(choices=self.output_choices()),
                self.resume_btn: gr.update(interactive=bool(jobs) and not busy)}

    def sync_models(self, current=None) -> dict:
        """The model list as Text to Video sees it (after a rescan, an install, a visit)."""
        choices = common.runnable_choices(common.model_status(self.ctx.engine)[0])
        ids = [c[1] for c in choices]
        value = current if current in ids else (ids[0] if ids else None)
        out = {self.model: gr.update(choices=choices, value=value), self.go: gr.update(interactive=bool(ids))}
        if value and value != current:
            sizes = common.size_choices(catalog.get(value))
            out[self.size] = gr.update(choices=sizes, value=sizes[0])
            out.update(self.extras(catalog.get(value)))
        return out

    def sync_outputs(self) -> list:
        return [self.model, self.go, self.size, *self.extras_outputs()]

    def on_load(self, last: dict) -> dict:
        """This visit's model list, unfinished jobs and outputs, and this browser's last long request."""
        prev = (last or {}).get("extend") or {}
        out = self.sync_models(prev.get("model"))
        out.update(self.refresh_lists())
        spec = common.spec_or_none(prev.get("model"))
        if spec is not None and prev.get("model") in self.t2v.ready_ids():
            sizes = common.size_choices(spec)
            out[self.size] = gr.update(choices=sizes, value=prev.get("size") if prev.get("size") in sizes
                                       else sizes[0])
            out.update({self.prompt: prev.get("prompt") or "", self.total: prev.get("total") or 161,
                        self.window: prev.get("window") or 0, self.overlap: prev.get("overlap") or 0})
            out.update(self.extras(spec, prev))
        elif out[self.model].get("value"):
            out.update(self.extras(catalog.get(out[self.model]["value"])))
        return out

    def load_outputs(self) -> list:
        return [self.model, self.go, self.size, self.jobs, self.from_output, self.resume_btn, self.prompt,
                self.total, self.window, self.overlap, *self.extras_outputs()]

    def remember(self, last, *values):
        last = dict(last or {})
        kept = {k: v for k, v in zip(self.inputs(), values) if k not in ("upload", "from_output")}
        last["extend"] = kept
        return last

    # ------------------------------------------------------------------------------------------ runs
    def generate(self, job, v: dict):
        try:
            lreq = self.build_request(v)
        except UserError as e:
            yield self.view.failed(common.user_error_text(e))
            return
        a14b = catalog.get(lreq.base.model).experts == 2
        yield self.view.starting(a14b)
        stream = engine_api.run(self.ctx.engine, lreq, job.cancel, common.overrides_of(v.get("overrides")))
        yield from self.view.render(stream, a14b, serve=self.ctx.policy.video)

    def resume(self, job, v: dict):
        video = self.ctx.policy.video(v.get("job")) if v.get("job") else None
        if video is None:
            yield self.view.failed("Choose one of the unfinished jobs first.")
            return
        yield self.view.starting(False)
        stream = engine_api.resume(self.ctx.engine, video, job.cancel)     # the journal has its settings
        yield from self.view.render(stream, False, serve=self.ctx.policy.video)
