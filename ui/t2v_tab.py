"""The Text to Video tab: controls, the live run, the past outputs (they play when clicked) and "load
settings from this video". Also the first-run panel (what is missing, the tiny demo models), since a new
user lands here first.

Controls change each other only on user input (`.input`), never on a programmatic update, so a loaded
video's settings or a rescan arrive in one update that no handler overwrites afterwards.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import gradio as gr

from wan_app import catalog, outputs
from wan_app.catalog import DEFAULT_NEGATIVE_PROMPT, SOLVERS
from wan_app.errors import UserError
from wan_app.media import read_metadata
from wan_app.request import MAX_SEED, Request, parse_size

from . import common, engine_api
from .cache_setting import CacheSetting, plan_note
from .common import AppContext
from .lora_picker import LoraPicker
from .models_panel import ModelsPanel
from .render import RunView, expert_badge_html, message_html
from .runs import Page, Runner

log = logging.getLogger(__name__)

GALLERY_LIMIT = 24
# Where each UserError field of a clip request is shown (the engine's field name -> this tab's input).
FIELD_INPUTS = {"model": "model", "prompt": "prompt", "negative_prompt": "negative", "size": "size",
                "width": "size", "height": "size", "frames": "frames", "steps": "steps", "shift": "shift",
                "guidance": "cfg", "guidance_2": "cfg2", "boundary": "boundary", "solver": "solver",
                "seed": "seed"}
INPUT_LABELS = {"model": "Model", "prompt": "Prompt", "negative": "Negative prompt", "size": "Size",
                "frames": "Frames", "steps": "Steps", "shift": "Shift", "cfg": "CFG", "cfg2": "CFG (low-noise)",
                "boundary": "Expert switch boundary", "solver": "Solver", "seed": "Seed", "cache": "Step cache",
                "cache_threshold": "Cache threshold", "preset": "Few-step preset", "lora0": "LoRA"}
OVERRIDE_LABELS = {"blocks_swapped": "Blocks swapped to CPU", "weight_dtype": "Transformer weight dtype",
                   "text_encoder": "Text encoder runs on", "attention": "Attention kernel",
                   "vae_tiling": "VAE tiling", "experts_resident": "A14B experts kept in RAM"}


def problem_at(e: UserError, field_inputs: dict, default: str) -> tuple[str, str]:
    """(input name, message) for a UserError: at its field, or at the model when Settings caused it."""
    text = e.problem + (f" — {e.fix}" if e.fix else "")
    if e.field in OVERRIDE_LABELS:
        return "model", f"Settings → {OVERRIDE_LABELS[e.field]}: {text}"
    name = field_inputs.get(e.field, default)
    return name, f"{INPUT_LABELS.get(name, e.field)}: {text}"


class T2VTab:
    """Builds the tab inside an open gr.Blocks."""

    RUN_OUTPUTS = ("status", "notices", "badge", "preview", "video", "plan", "error", "seed_used", "info",
                   "gallery", "gallery_paths")

    def __init__(self, ctx: AppContext, page: Page):
        self.ctx, self.page = ctx, page
        self.build()

    # ------------------------------------------------------------------------------------------ layout
    def build(self) -> None:
        self.models = ModelsPanel(self.ctx, first_run=True)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=360):
                # Choices come per visit (demo.load). allow_custom_value: an API session never loads the
                # page, so Gradio's own choice check would refuse every model; the validator checks them.
                with gr.Row():
                    self.model = gr.Dropdown([], value=None, label="Model", scale=4, elem_id="wan-model",
                                             allow_custom_value=True)
                    self.rescan_btn = gr.Button("Rescan", scale=0, size="sm", min_width=90)
                self.prompt = gr.Textbox(label="Prompt", lines=3, elem_id="wan-prompt",
                                         placeholder="A red fox runs through fresh snow at dawn, cinematic")
                with gr.Row():
                    self.generate_btn = gr.Button("Generate", variant="primary", elem_id="wan-generate",
                                                  interactive=False)
                    self.stop_btn = gr.Button("Stop", variant="stop", elem_id="wan-stop")
                error = RunView.error_box("wan")          # errors right under Generate
                with gr.Row():
                    self.size = gr.Dropdown([], value=None, label="Size (width x height)", elem_id="wan-size",
                                            allow_custom_value=True)
                    self.frames = gr.Slider(1, 81, value=81, step=4, label="Frames (4n+1)", elem_id="wan-frames")
                self.frames_note = gr.Markdown("", elem_classes=["wan-reasons"])
                # Folded: the official default is Chinese, unreadable for most users, and rarely edited.
                with gr.Accordion("Negative prompt (the official default is prefilled)", open=False):
                    self.negative = gr.Textbox(label="Negative prompt", lines=3, show_label=False,
                                               value=DEFAULT_NEGATIVE_PROMPT, elem_id="wan-negative")
                with gr.Accordion("Sampling", open=True):
                    with gr.Row():
                        self.steps = gr.Slider(1, 100, value=50, step=1, label="Steps", elem_id="wan-steps")
                        self.shift = gr.Number(value=5.0, label="Shift", elem_id="wan-shift")
                        self.solver = gr.Dropdown(list(SOLVERS), value="unipc", label="Solver", elem_id="wan-solver")
                    with gr.Row():
                        self.cfg = gr.Number(value=5.0, label="CFG", elem_id="wan-cfg")
                        self.cfg2 = gr.Number(value=3.0, label="CFG (low-noise expert)", visible=False,
                                              elem_id="wan-cfg2")
                        self.boundary = gr.Number(value=0.875, step=0.005, label="Expert switch boundary",
                                                  visible=False, elem_id="wan-boundary")
                    with gr.Row():
                        self.seed_mode = gr.Radio(["random", "fixed"], value="random", label="Seed",
                                                  elem_id="wan-seed-mode")
                        self.seed = gr.Number(value=42, precision=0, label="Seed value (when fixed)",
                                              elem_id="wan-seed")
                    self.cache = CacheSetting("wan")
                with gr.Accordion("LoRAs and few-step presets", open=False, elem_id="wan-loras"):
                    self.loras = LoraPicker(self.ctx, "wan")
            with gr.Column(scale=6, min_width=360):
                self.view = RunView("wan", video_label="Result", error=error,
                                    preview_label="Live preview (what the model predicts at this step)")
                self.seed_used = gr.Textbox(label="Seed used", interactive=False, elem_id="wan-seed-used")
                with gr.Accordion("Settings of this video", open=False):
                    # Text, not gr.JSON: Gradio clients take any {"path": ...} in a JSON value for a file.
                    self.info = gr.Code(label="Metadata", language="json", interactive=False, lines=12)

        gr.Markdown("### Past outputs")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                self.gallery_paths = gr.State([])
                self.gallery = gr.Gallery([], label="Outputs (newest first); click one to play it", columns=6,
                                          height=260, object_fit="contain", allow_preview=False,
                                          fit_columns=False, elem_id="wan-gallery")
                self.refresh_btn = gr.Button("Refresh", size="sm")
            with gr.Column(scale=2):
                self.picked = gr.Video(label="Selected output", interactive=False, height=220, loop=True,
                                       elem_id="wan-picked")
                self.selected = gr.Textbox(label="Selected video", interactive=False, elem_id="wan-selected")
                self.load_btn = gr.Button("Load settings from this video", elem_id="wan-load-settings")
                self.load_msg = gr.HTML("", elem_id="wan-load-msg")
        self.models.build_more()
        self.wire()

    # ------------------------------------------------------------------------------------------ values
    def inputs(self) -> dict:
        return {"model": self.model, "prompt": self.prompt, "negative": self.negative, "size": self.size,
                "frames": self.frames, "steps": self.steps, "shift": self.shift, "cfg": self.cfg,
                "cfg2": self.cfg2, "boundary": self.boundary, "solver": self.solver,
                "seed_mode": self.seed_mode, "seed": self.seed, **self.cache.inputs(), **self.loras.inputs()}

    def field_inputs(self) -> dict:
        return {**FIELD_INPUTS, **self.cache.field_inputs(), **self.loras.field_inputs()}

    def ready_ids(self) -> list[str]:
        return [c[1] for c in common.runnable_choices(common.model_status(self.ctx.engine)[0])]

    def model_values(self, spec, r: dict | None = None, overrides=None, loras: list | None = None,
                     preset: str | None = None) -> dict:
        """Every control that depends on the model, from `r` (a request's fields) or the official
        defaults, and `loras` ([{item, strength, strength_low}]) in the picker: one update, so nothing
        has to follow it."""
        r = r or {}
        sizes = common.size_choices(spec)
        w, h = r.get("width") or spec.default_size[0], r.get("height") or spec.default_size[1]
        size = common.size_label(w, h)
        if size not in sizes:
            sizes = sizes + [size]
        limit, why = common.frames_limit(self.ctx.engine, spec, w, h, overrides)
        frames = r.get("frames") or spec.frames
        if frames > limit:
            why += f" This video had {frames} frames."
        a14b = spec.experts == 2
        pick = lambda k, default: r[k] if r.get(k) is not None else default  # noqa: E731
        return {
            self.size: gr.update(choices=sizes, value=size),
            self.frames: gr.update(maximum=max(limit, 1), value=common.snap_frames(frames, max(limit, 1))),
            self.frames_note: why,
            self.steps: pick("steps", spec.steps),
            self.shift: pick("shift", spec.shift),
            self.cfg: gr.update(value=pick("guidance", spec.guidance),
                                label="CFG (high-noise expert)" if a14b else "CFG"),
            self.cfg2: gr.update(value=pick("guidance_2", spec.guidance_2 if a14b else 3.0), visible=a14b),
            self.boundary: gr.update(value=pick("boundary", spec.boundary if a14b else 0.875), visible=a14b),
            self.view.badge: expert_badge_html(None),
            **self.cache.for_model(spec, r), **self.loras.for_model(spec, loras, preset),
        }

    def model_outputs(self) -> list:
        return [self.size, self.frames, self.frames_note, self.steps, self.shift, self.cfg, self.cfg2,
                self.boundary, self.view.badge, *self.cache.outputs(), *self.loras.outputs()]

    def build_request(self, v: dict) -> Request:
        spec = common.spec_or_none(v.get("model"))
        if spec is None:
            raise UserError("model", "no model is chosen", "install a model or the tiny demo models first")
        w, h = parse_size(v["size"]) if v.get("size") else spec.default_size
        a14b = spec.experts == 2
        num = lambda k, kind=float: None if v.get(k) in (None, "") else kind(v[k])  # noqa: E731
        seed = None
        if v.get("seed_mode") == "fixed" and v.get("seed") not in (None, ""):
            seed = float(v["seed"])
            if seed != int(seed) or not 0 <= seed <= MAX_SEED:
                raise UserError("seed", f"{v['seed']} is not a seed", f"use a whole number from 0 to {MAX_SEED}")
            seed = int(seed)
        req = Request(
            model=spec.id, prompt=v.get("prompt") or "", negative_prompt=v.get("negative"),
            width=w, height=h, frames=num("frames", int), steps=num("steps", int), shift=num("shift"),
            guidance=num("cfg"), guidance_2=num("cfg2") if a14b else None,
            boundary=num("boundary") if a14b else None, solver=v.get("solver") or "unipc", seed=seed,
            **self.cache.fields(v))
        return self.loras.apply(v, req)

    def check(self, v: dict) -> dict:
        """{input name: message} for what is wrong, with the engine's own rules (nothing loads)."""
        try:
            req = self.build_request(v)
            if req.model not in self.ready_ids():
                raise UserError("model", f"{catalog.get(req.model).name} is not installed here",
                                "install its files (see the list above) or pick another model")
            req, _ = engine_api.check_request(req)
            p = engine_api.plan(self.ctx.engine, req, common.overrides_of(v.get("overrides")))
            if p.blocker:
                raise UserError(p.blocker["field"], p.blocker["problem"], p.blocker["fix"])
        except UserError as e:
            name, msg = problem_at(e, self.field_inputs(), "prompt")
            return {name: msg}
        except Exception as e:  # noqa: BLE001 - a check must not take the button down
            log.exception("checking the request failed")
            return {"prompt": f"Could not check this request: {type(e).__name__}: {e}"}
        return {}

    # ------------------------------------------------------------------------------------------ events
    def wire(self) -> None:
        page = self.page
        self.runner = Runner("clip", self.generate_btn, "Generate", self.view,
                             ready=lambda: bool(self.ready_ids()))
        outputs = [*self.view.components, self.seed_used, self.info, self.gallery, self.gallery_paths]
        page.add_runner(self.runner, self.stop_btn, self.inputs(), outputs, self.check, self.generate,
                        api_name="generate")
        self.generate_btn.click(self.remember, [page.last, *self.inputs().values()], [page.last], queue=False,
                                show_progress="hidden", api_visibility="private")
        # events after which the model, size or frames may differ (the Settings plan follows them)
        self.choice_events = [
            self.model.input(self.on_model, [self.model, page.overrides], self.model_outputs(),
                             show_progress="hidden", api_visibility="private"),
            self.size.input(self.on_size, [self.model, self.size, self.frames, page.overrides],
                            [self.frames, self.frames_note], show_progress="hidden", api_visibility="private"),
            self.frames.release(lambda: None, None, None, queue=False, show_progress="hidden",
                                api_visibility="private")]
        rescanned = self.rescan_btn.click(self.rescan, [self.model, page.overrides], self.rescan_outputs(),
                                          api_name="rescan", show_progress="hidden")
        # events after which the model list may have changed (the Extend tab follows them)
        self.model_list_events = [rescanned, *self.models.wire(
            after=(self.rescan, [self.model, page.overrides], self.rescan_outputs()))]
        self.refresh_btn.click(self.refresh_gallery, None, [self.gallery, self.gallery_paths],
                               api_name="outputs")
        self.gallery.select(self.on_select, [self.gallery_paths],
                            [self.selected, self.picked, self.load_msg], api_visibility="private")
        self.choice_events.append(self.load_btn.click(
            self.load_from_video, [self.selected, page.overrides],
            [self.model, self.prompt, self.negative, *self.model_outputs(), self.solver, self.seed_mode,
             self.seed, self.load_msg], api_name="load_settings"))
        self.choice_events += self.model_list_events
        self.loras.wire(self.model, {"steps": self.steps, "guidance": self.cfg, "guidance_2": self.cfg2,
                                     "shift": self.shift, "solver": self.solver, "boundary": self.boundary},
                        self.view.error)
        self.cache.wire(self.cache_note, [page.overrides, *self.inputs().values()], [self.steps.release])

    def cache_note(self, overrides, *values) -> str:
        v = dict(zip(self.inputs(), values))
        try:
            # what the cache skips depends on the model and the steps, not on the prompt
            req = self.build_request({**v, "prompt": v.get("prompt") or "-", "preset": None})
        except UserError as e:
            return f"{e.field}: {e.problem}"
        return plan_note(self.ctx.engine, req, overrides)

    def remember(self, last, *values):
        """The last request of this browser, kept in the browser (the settings file is written only by
        Save): a reload opens where the user left off."""
        last = dict(last or {})
        last["clip"] = dict(zip(self.inputs(), values))
        return last

    def on_model(self, model_id, overrides):
        spec = common.spec_or_none(model_id)
        if spec is None:
            return {}
        return self.model_values(spec, None, common.overrides_of(overrides))

    def on_size(self, model_id, size, frames, overrides):
        spec = common.spec_or_none(model_id)
        if spec is None or not size:
            return {}
        w, h = parse_size(size)
        limit, why = common.frames_limit(self.ctx.engine, spec, w, h, common.overrides_of(overrides))
        return {self.frames: gr.update(maximum=max(limit, 1),
                                       value=common.snap_frames(frames or spec.frames, max(limit, 1))),
                self.frames_note: why}

    # ------------------------------------------------------------------------------------------ the run
    def generate(self, job, v: dict):
        try:
            req = self.build_request(v)
            spec = catalog.get(req.model)
        except UserError as e:
            yield self.view.failed(common.user_error_text(e), "")
            return
        a14b = spec.experts == 2
        yield self.view.starting(a14b) | {self.seed_used: "", self.info: ""}
        stream = engine_api.run(self.ctx.engine, req, job.cancel, common.overrides_of(v.get("overrides")))
        yield from self.view.render(stream, a14b, on_finished=self.finished, serve=self.ctx.policy.video)

    def finished(self, ev) -> dict:
        items = self.gallery_items()
        used = (ev.metadata.get("request") or {}).get("seed")
        return {self.seed_used: "" if used is None else str(used), self.info: metadata_text(ev.metadata),
                self.gallery: items, self.gallery_paths: [p for p, _ in items]}

    # ------------------------------------------------------------------------------------------ gallery
    def gallery_items(self) -> list[tuple[str, str]]:
        """The app's own videos only: regular files in the dated folders (no symlinks), newest first."""
        items = []
        for it in outputs.list_outputs(self.ctx.outputs_dir, limit=GALLERY_LIMIT * 2):
            path = self.ctx.policy.video(it.path)
            if path is None or ((it.metadata or {}).get("long") or {}).get("complete") is False:
                continue
            prompt = ((it.metadata or {}).get("request") or {}).get("prompt") or it.path.name
            items.append((str(path), prompt[:60]))
            if len(items) == GALLERY_LIMIT:
                break
        return items

    def refresh_gallery(self):
        items = self.gallery_items()
        return items, [p for p, _ in items]

    def on_select(self, paths, evt: gr.SelectData):
        try:
            path = self.ctx.policy.video(paths[evt.index])
        except (IndexError, TypeError):
            path = None
        if path is None:
            return "", None, message_html("error", "That video is no longer there: press Refresh.")
        return str(path), str(path), ""

    def load_from_video(self, path, overrides):
        """Every control as it was for that video, in one update (only the app's own videos)."""
        video = self.ctx.policy.video(path) if path else None
        if video is None:
            return {self.load_msg: message_html("error", "Choose one of your outputs first.")}
        meta = read_metadata(video) or {}
        r = meta.get("request")
        if not isinstance(r, dict) or r.get("model") not in catalog.MODELS:
            return {self.load_msg: message_html("error", f"{video.name} has no settings of this app in it.")}
        spec = catalog.get(r["model"])
        if meta.get("image") or spec.image_required:
            return {self.load_msg: message_html("error", f"{video.name} was made from an image: load its settings "
                                                "on the Image to Video tab.")}
        ready = self.ready_ids()
        out = self.model_values(spec, r, common.overrides_of(overrides), LoraPicker.recorded(meta))
        out.update({
            self.prompt: r.get("prompt", ""),
            self.negative: r.get("negative_prompt") or DEFAULT_NEGATIVE_PROMPT,
            self.solver: r.get("solver") or "unipc",
            self.seed_mode: "fixed",
            self.seed: r.get("seed") if r.get("seed") is not None else 42,
        })
        note = f"Loaded the settings of {video.name} (seed fixed to {r.get('seed')})."
        if r["model"] in ready:
            out[self.model] = gr.update(value=r["model"])
        else:
            note += f" Its model, {spec.name}, is not installed here: install it to make this video again."
        note += self.loras.restore_note(meta, spec)
        if meta.get("long"):
            note += " It is a long video: use the Extend tab to make it again."
        out[self.load_msg] = message_html("ok", note)
        return out

    # ------------------------------------------------------------------------------------------ models
    def rescan_outputs(self) -> list:
        return [self.model, self.generate_btn, *self.models.outputs(), *self.model_outputs()]

    def rescan(self, current=None, overrides=None, request: gr.Request = None, refresh: bool = True) -> dict:
        """The model list as the folders are now. The chosen model and every other control stay as they
        are while that model is still ready."""
        statuses, note = common.model_status(self.ctx.engine, refresh=refresh)
        choices = common.runnable_choices(statuses)
        ids = [c[1] for c in choices]
        busy = request is not None and self.ctx.jobs.active(common.session_of(request)) is not None
        out = {self.model: gr.update(choices=choices, value=current if current in ids else
                                     (ids[0] if ids else None)),
               self.generate_btn: gr.update(interactive=bool(ids) and not busy)}
        out.update(self.models.updates(statuses, note))
        if ids and current not in ids:
            out.update(self.model_values(catalog.get(ids[0]), None, common.overrides_of(overrides)))
        return out

    def on_load(self, last: dict, overrides: dict) -> dict:
        """The tab as it is for this visit: models ready now, the outputs there now, this browser's last
        request (or the saved default model)."""
        statuses, note = common.model_status(self.ctx.engine, refresh=False)
        ids = [c[1] for c in common.runnable_choices(statuses)]
        prev = (last or {}).get("clip") or {}
        saved = self.ctx.saved_settings()
        default = next((m for m in (prev.get("model"), saved.default_model) if m in ids), ids[0] if ids else None)
        out = self.rescan(default, overrides, None, refresh=False)
        out[self.model] = gr.update(choices=common.runnable_choices(statuses), value=default)
        if default:
            spec = catalog.get(default)
            r = {}
            if prev.get("model") == default:
                try:
                    r = self.build_request({**prev, "preset": None}).to_dict()
                except (UserError, ValueError, TypeError):
                    r = {}
            out.update(self.model_values(spec, r, common.overrides_of(overrides),
                                         LoraPicker.from_values(prev) if r else None,
                                         prev.get("preset") if r else None))
            if r:
                out.update({self.prompt: r.get("prompt", ""),
                            self.negative: prev.get("negative") or DEFAULT_NEGATIVE_PROMPT,
                            self.solver: r.get("solver") or "unipc",
                            self.seed_mode: prev.get("seed_mode") or "random",
                            self.seed: prev.get("seed") if prev.get("seed") is not None else 42})
        items = self.gallery_items()
        out.update({self.gallery: items, self.gallery_paths: [p for p, _ in items]})
        return out

    def load_outputs(self) -> list:
        return list(dict.fromkeys([*self.rescan_outputs(), self.prompt, self.negative, self.solver,
                                   self.seed_mode, self.seed, self.gallery, self.gallery_paths]))


def metadata_text(meta: dict) -> str:
    return json.dumps(meta, indent=2, ensure_ascii=False)


__all__ = ["T2VTab", "metadata_text", "Path"]
