"""The Image to Video tab: a first frame (and, for first-last-frame models, a last frame), a prompt, the
models that take an image, the size the official rule gives for the image (shown, overridable), and the
same live run as Text to Video: the shared RunView, a job with its own cancel, the one GPU queue.

"Load settings from a video" restores everything but the image: a video keeps only the image's name,
SHA-256 and size, so the tab says which image to upload again.

Controls change each other only on user input (`.input`; the image's `.change` does nothing when the
image is cleared), so a loaded video's settings arrive in one update that no handler overwrites.
"""
from __future__ import annotations

import logging

import gradio as gr

from wan_app import catalog, i2v, outputs
from wan_app.catalog import DEFAULT_NEGATIVE_PROMPT, SOLVERS
from wan_app.errors import UserError
from wan_app.media import read_metadata
from wan_app.request import MAX_SEED, Request, parse_size

from . import common, engine_api
from .cache_setting import CacheSetting, plan_note
from .common import AppContext
from .lora_picker import LoraPicker
from .render import RunView, expert_badge_html, message_html
from .runs import Page, Runner
from .t2v_tab import OVERRIDE_LABELS, metadata_text, problem_at

log = logging.getLogger(__name__)

PREFIX = "wan-i2v"
OUTPUTS_LIMIT = 50
FIELD_INPUTS = {"model": "model", "image": "image", "last_image": "last_image", "prompt": "prompt",
                "negative_prompt": "negative", "size": "size", "width": "size", "height": "size",
                "frames": "frames", "steps": "steps", "shift": "shift", "guidance": "cfg", "guidance_2": "cfg2",
                "boundary": "boundary", "solver": "solver", "seed": "seed"}
INPUT_LABELS = {"model": "Model", "image": "First frame", "last_image": "Last frame", "prompt": "Prompt",
                "negative": "Negative prompt", "size": "Size", "frames": "Frames", "steps": "Steps",
                "shift": "Shift", "cfg": "CFG", "cfg2": "CFG (low-noise)", "boundary": "Expert switch boundary",
                "solver": "Solver", "seed": "Seed", "cache": "Step cache", "cache_threshold": "Cache threshold",
                "preset": "Few-step preset", "lora0": "LoRA"}


def image_model_status(engine, refresh: bool = False):
    """(statuses of the models that take an image: the non-tiny ones and the tiny ones present, a note
    about skipped files or None)."""
    try:
        inv = engine_api.inventory(engine, refresh=refresh)
        statuses = inv.status()
    except Exception as e:  # noqa: BLE001 - an unreadable folder must not take the page down
        log.exception("scanning the models folders failed")
        return [], f"Scanning the models folders failed: {e}"
    problems = engine_api.inventory_problems(inv)
    note = ("Skipped in the model folders:\n" + "\n".join(f"- {p}" for p in problems)) if problems else None
    shown = [s for s in statuses if s.spec.image_input != "none" and (s.runnable or not s.spec.tiny)]
    # the models made for this tab first; TI2V 5B, which also makes videos from text alone, after them
    return sorted(shown, key=lambda s: not s.spec.image_required), note


def image_size(path) -> tuple[int, int] | None:
    """(width, height) of an uploaded image, or None when it is not a usable one (the check says why)."""
    if not path:
        return None
    try:
        return i2v.check_image(path, "image")
    except UserError:
        return None


class I2VTab:
    """Builds the tab inside an open gr.Blocks."""

    def __init__(self, ctx: AppContext, page: Page):
        self.ctx, self.page = ctx, page
        self.build()

    # ------------------------------------------------------------------------------------------ layout
    def build(self) -> None:
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=360):
                self.model = gr.Dropdown([], value=None, label="Model (the models that take an image)",
                                         elem_id=f"{PREFIX}-model", allow_custom_value=True)
                with gr.Row():
                    # image_mode None: the file is handed over as uploaded, so the engine's own checks
                    # (animated, empty, unreadable) see it; Gradio's RGB default re-encodes it
                    self.image = gr.Image(label="First frame", type="filepath", image_mode=None, height=180,
                                          sources=["upload", "clipboard"], elem_id=f"{PREFIX}-image")
                    self.last_image = gr.Image(label="Last frame", type="filepath", image_mode=None, height=180,
                                               sources=["upload", "clipboard"], visible=False,
                                               elem_id=f"{PREFIX}-last-image")
                self.prompt = gr.Textbox(label="Prompt", lines=2, elem_id=f"{PREFIX}-prompt",
                                         placeholder="The fox turns its head and runs off into the snow")
                with gr.Row():
                    self.generate_btn = gr.Button("Generate", variant="primary", elem_id=f"{PREFIX}-generate",
                                                  interactive=False)
                    self.stop_btn = gr.Button("Stop", variant="stop", elem_id=f"{PREFIX}-stop")
                error = RunView.error_box(PREFIX)
                with gr.Row():
                    self.size = gr.Dropdown([], value=None, label="Size (width x height)", allow_custom_value=True,
                                            elem_id=f"{PREFIX}-size")
                    self.frames = gr.Slider(1, 81, value=81, step=4, label="Frames (4n+1)", elem_id=f"{PREFIX}-frames")
                self.size_note = gr.Markdown("", elem_id=f"{PREFIX}-size-note", elem_classes=["wan-reasons"])
                self.frames_note = gr.Markdown("", elem_classes=["wan-reasons"])
                self.missing = gr.Markdown("", visible=False, elem_id=f"{PREFIX}-missing")
                with gr.Accordion("Negative prompt (the official default is prefilled)", open=False):
                    self.negative = gr.Textbox(label="Negative prompt", lines=3, show_label=False,
                                               value=DEFAULT_NEGATIVE_PROMPT, elem_id=f"{PREFIX}-negative")
                with gr.Accordion("Sampling", open=False, elem_id=f"{PREFIX}-sampling"):
                    with gr.Row():
                        self.steps = gr.Slider(1, 100, value=40, step=1, label="Steps", elem_id=f"{PREFIX}-steps")
                        self.shift = gr.Number(value=5.0, label="Shift", elem_id=f"{PREFIX}-shift")
                        self.solver = gr.Dropdown(list(SOLVERS), value="unipc", label="Solver",
                                                  elem_id=f"{PREFIX}-solver")
                    with gr.Row():
                        self.cfg = gr.Number(value=5.0, label="CFG", elem_id=f"{PREFIX}-cfg")
                        self.cfg2 = gr.Number(value=3.0, label="CFG (low-noise expert)", visible=False,
                                              elem_id=f"{PREFIX}-cfg2")
                        self.boundary = gr.Number(value=0.9, step=0.005, label="Expert switch boundary",
                                                  visible=False, elem_id=f"{PREFIX}-boundary")
                    with gr.Row():
                        self.seed_mode = gr.Radio(["random", "fixed"], value="random", label="Seed",
                                                  elem_id=f"{PREFIX}-seed-mode")
                        self.seed = gr.Number(value=42, precision=0, label="Seed value (when fixed)",
                                              elem_id=f"{PREFIX}-seed")
                    self.cache = CacheSetting(PREFIX)
                with gr.Accordion("LoRAs and few-step presets", open=False, elem_id=f"{PREFIX}-loras"):
                    self.loras = LoraPicker(self.ctx, PREFIX)
            with gr.Column(scale=6, min_width=360):
                self.view = RunView(PREFIX, video_label="Result", error=error,
                                    preview_label="Live preview (what the model predicts at this step)")
                self.seed_used = gr.Textbox(label="Seed used", interactive=False, elem_id=f"{PREFIX}-seed-used")
                with gr.Accordion("Settings of this video", open=False):
                    # Text, not gr.JSON: Gradio clients take any {"path": ...} in a JSON value for a file.
                    self.info = gr.Code(label="Metadata", language="json", interactive=False, lines=12,
                                        elem_id=f"{PREFIX}-info")
                with gr.Accordion("Load settings from one of your image-to-video videos", open=False):
                    with gr.Row():
                        self.videos = gr.Dropdown([], value=None, label="Video", scale=4, allow_custom_value=True,
                                                  elem_id=f"{PREFIX}-videos")
                        self.videos_refresh = gr.Button("Refresh", size="sm", scale=1)
                    self.load_btn = gr.Button("Load settings from this video", elem_id=f"{PREFIX}-load-settings")
                    self.load_msg = gr.HTML("", elem_id=f"{PREFIX}-load-msg")
        self.wire()

    # ------------------------------------------------------------------------------------------ values
    def inputs(self) -> dict:
        return {"model": self.model, "image": self.image, "last_image": self.last_image, "prompt": self.prompt,
                "negative": self.negative, "size": self.size, "frames": self.frames, "steps": self.steps,
                "shift": self.shift, "cfg": self.cfg, "cfg2": self.cfg2, "boundary": self.boundary,
                "solver": self.solver, "seed_mode": self.seed_mode, "seed": self.seed,
                **self.cache.inputs(), **self.loras.inputs()}

    def field_inputs(self) -> dict:
        return {**FIELD_INPUTS, **self.cache.field_inputs(), **self.loras.field_inputs()}

    def ready_ids(self) -> list[str]:
        return [c[1] for c in common.runnable_choices(image_model_status(self.ctx.engine)[0])]

    def size_values(self, spec, image, r: dict | None = None, overrides=None, frames=None) -> dict:
        """Size choices with the one the image gives first, the frame limit at the chosen size, and a
        note saying where the size came from. `r` (a request's width/height) wins over the image."""
        r = r or {}
        wh = image_size(image)
        auto = i2v.output_size(spec, *wh) if wh else None
        sizes = common.size_choices(spec)
        if r.get("width") and r.get("height"):
            w, h = r["width"], r["height"]
        else:
            w, h = auto or spec.default_size
        chosen = common.size_label(w, h)
        choices = [(f"{common.size_label(*auto)} (from the image)", common.size_label(*auto))] if auto else []
        choices += [(s, s) for s in sizes if not auto or s != common.size_label(*auto)]
        if chosen not in [c[1] for c in choices]:
            choices.append((chosen, chosen))
        if wh:
            note = (f"The image is {wh[0]}x{wh[1]}: at {spec.name}'s area ({spec.default_size[0]}x"
                    f"{spec.default_size[1]}) its aspect ratio gives {common.size_label(*auto)}, by the official "
                    "rule. Pick or type another size to override it.")
        else:
            note = (f"Upload an image: the size follows from its aspect ratio at {spec.name}'s area "
                    f"({spec.default_size[0]}x{spec.default_size[1]}).")
        limit, why = common.frames_limit(self.ctx.engine, spec, w, h, overrides)
        frames = frames or r.get("frames") or spec.frames
        return {self.size: gr.update(choices=choices, value=chosen), self.size_note: note,
                self.frames: gr.update(maximum=max(limit, 1), value=common.snap_frames(frames, max(limit, 1))),
                self.frames_note: why}

    def model_values(self, spec, image=None, r: dict | None = None, overrides=None, loras: list | None = None,
                     preset: str | None = None) -> dict:
        """Every control that depends on the model, from `r` (a request's fields) or the official
        defaults, and `loras` ([{item, strength, strength_low}]) in the picker: one update, so nothing
        has to follow it."""
        r = r or {}
        a14b = spec.experts == 2
        pick = lambda k, default: r[k] if r.get(k) is not None else default  # noqa: E731
        out = self.size_values(spec, image, r, overrides)
        out.update({
            self.last_image: gr.update(visible=spec.image_input == "image+last"),
            self.steps: pick("steps", spec.steps),
            self.shift: pick("shift", spec.shift),
            self.cfg: gr.update(value=pick("guidance", spec.guidance),
                                label="CFG (high-noise expert)" if a14b else "CFG"),
            self.cfg2: gr.update(value=pick("guidance_2", spec.guidance_2 if a14b else 3.0), visible=a14b),
            self.boundary: gr.update(value=pick("boundary", spec.boundary if a14b else 0.9), visible=a14b),
            self.view.badge: expert_badge_html(None),
        })
        out.update(self.cache.for_model(spec, r))
        out.update(self.loras.for_model(spec, loras, preset))
        return out

    def model_outputs(self) -> list:
        return list(dict.fromkeys([self.size, self.size_note, self.frames, self.frames_note, self.last_image,
                                   self.steps, self.shift, self.cfg, self.cfg2, self.boundary, self.view.badge,
                                   *self.cache.outputs(), *self.loras.outputs()]))

    def build_request(self, v: dict, *, need_image: bool = True) -> Request:
        spec = common.spec_or_none(v.get("model"))
        if spec is None:
            raise UserError("model", "no model is chosen", "install an image-to-video model first")
        if spec.image_input == "none":
            raise UserError("model", f"{spec.name} makes videos from text",
                            "use the Text to Video tab, or choose a model that takes an image")
        if need_image and not v.get("image"):
            raise UserError("image", "no image was given", "upload the frame the video starts from")
        w, h = parse_size(v["size"]) if v.get("size") else (None, None)
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
            image=str(v["image"]) if v.get("image") else None,
            last_image=str(v["last_image"]) if v.get("last_image") and spec.image_input == "image+last" else None,
            **self.cache.fields(v))
        return self.loras.apply(v, req)

    def problem(self, e: UserError) -> tuple[str, str]:
        name, msg = problem_at(e, self.field_inputs(), "prompt")
        if e.field not in OVERRIDE_LABELS and name in INPUT_LABELS:
            msg = f"{INPUT_LABELS[name]}: {e.problem}" + (f" — {e.fix}" if e.fix else "")
        return name, msg

    def check(self, v: dict) -> dict:
        """{input name: message} for what is wrong, with the engine's own rules (nothing loads)."""
        try:
            req = self.build_request(v)
            if req.model not in self.ready_ids():
                raise UserError("model", f"{catalog.get(req.model).name} is not installed here",
                                "install its files (see the list below) or pick another model")
            req, _ = engine_api.check_request(req)
            p = engine_api.plan(self.ctx.engine, req, common.overrides_of(v.get("overrides")))
            if p.blocker:
                raise UserError(p.blocker["field"], p.blocker["problem"], p.blocker["fix"])
        except UserError as e:
            return dict([self.problem(e)])
        except Exception as e:  # noqa: BLE001 - a check must not take the button down
            log.exception("checking the request failed")
            return {"prompt": f"Could not check this request: {type(e).__name__}: {e}"}
        return {}

    # ------------------------------------------------------------------------------------------ events
    def wire(self) -> None:
        page = self.page
        self.runner = Runner("i2v", self.generate_btn, "Generate", self.view, ready=lambda: bool(self.ready_ids()))
        run_outputs = [*self.view.components, self.seed_used, self.info, self.videos]
        page.add_runner(self.runner, self.stop_btn, self.inputs(), run_outputs, self.check, self.generate,
                        api_name="image_to_video")
        kept = [c for k, c in self.inputs().items() if k not in ("image", "last_image")]
        self.generate_btn.click(self.remember, [page.last, *kept], [page.last], queue=False,
                                show_progress="hidden", api_visibility="private")
        self.model.input(self.on_model, [self.model, self.image, page.overrides], self.model_outputs(),
                         show_progress="hidden", api_visibility="private")
        self.image.change(self.on_image, [self.model, self.image, self.frames, page.overrides],
                          [self.size, self.size_note, self.frames, self.frames_note],
                          show_progress="hidden", api_visibility="private")
        self.size.input(self.on_size, [self.model, self.size, self.frames, page.overrides],
                        [self.frames, self.frames_note], show_progress="hidden", api_visibility="private")
        self.loras.wire(self.model, {"steps": self.steps, "guidance": self.cfg, "guidance_2": self.cfg2,
                                     "shift": self.shift, "solver": self.solver, "boundary": self.boundary},
                        self.view.error)
        note_inputs = [page.overrides, *self.inputs().values()]
        self.cache.wire(self.cache_note, note_inputs, [self.steps.release])
        self.videos_refresh.click(self.refresh_videos, None, [self.videos], show_progress="hidden",
                                  api_visibility="private")
        self.load_btn.click(self.load_from_video, [self.videos, self.image, page.overrides],
                            [self.model, self.prompt, self.negative, *self.model_outputs(), self.solver,
                             self.seed_mode, self.seed, self.image, self.last_image, self.load_msg],
                            api_name="load_i2v_settings")

    def cache_note(self, overrides, *values) -> str:
        v = dict(zip(self.inputs(), values))
        try:
            # no image needed: what the cache skips depends on the model and steps, not the picture
            req = self.build_request({**v, "prompt": v.get("prompt") or "-", "image": None, "last_image": None,
                                      "preset": None}, need_image=False)
        except UserError as e:
            return f"{e.field}: {e.problem}"
        return plan_note(self.ctx.engine, req, overrides)

    def remember(self, last, *values):
        """The last request of this browser (not its images), kept in the browser."""
        names = [k for k in self.inputs() if k not in ("image", "last_image")]
        last = dict(last or {})
        last["i2v"] = dict(zip(names, values))
        return last

    def on_model(self, model_id, image, overrides):
        spec = common.spec_or_none(model_id)
        if spec is None:
            return {}
        return self.model_values(spec, image, None, common.overrides_of(overrides))

    def on_image(self, model_id, image, frames, overrides):
        spec = common.spec_or_none(model_id)
        if spec is None or not image:
            return {}       # cleared (by the user or by loading a video's settings): nothing follows
        return self.size_values(spec, image, None, common.overrides_of(overrides), frames)

    def on_size(self, model_id, size, frames, overrides):
        spec = common.spec_or_none(model_id)
        if spec is None or not size:
            return {}
        try:
            w, h = parse_size(size)
        except UserError as e:
            return {self.frames_note: f"Size: {e.problem} — {e.fix}"}
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
        used = (ev.metadata.get("request") or {}).get("seed")
        return {self.seed_used: "" if used is None else str(used), self.info: metadata_text(ev.metadata),
                self.videos: gr.update(choices=self.video_choices())}

    # ------------------------------------------------------------------------------------------ videos
    def video_choices(self) -> list[tuple[str, str]]:
        """The app's own videos made from an image, newest first."""
        out = []
        for it in outputs.list_outputs(self.ctx.outputs_dir, limit=OUTPUTS_LIMIT):
            meta = it.metadata or {}
            path = self.ctx.policy.video(it.path)
            if path is None or not meta.get("image") or (meta.get("long") or {}).get("complete") is False:
                continue
            prompt = ((meta.get("request") or {}).get("prompt") or "")[:50]
            out.append((f"{path.parent.name}/{path.name} — {prompt}", str(path)))
        return out

    def refresh_videos(self):
        choices = self.video_choices()
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def load_from_video(self, path, image, overrides):
        """Every control as it was for that video, in one update, except the images: a video keeps only
        their name, hash and size, so the message says which to upload again."""
        video = self.ctx.policy.video(path) if path else None
        if video is None:
            return {self.load_msg: message_html("error", "Choose one of your videos first.")}
        meta = read_metadata(video) or {}
        r = meta.get("request")
        if not isinstance(r, dict) or r.get("model") not in catalog.MODELS:
            return {self.load_msg: message_html("error", f"{video.name} has no settings of this app in it.")}
        spec = catalog.get(r["model"])
        if spec.image_input == "none":
            return {self.load_msg: message_html("error", f"{video.name} was made from text with {spec.name}: "
                                                "load it on the Text to Video tab.")}
        out = self.model_values(spec, None, r, common.overrides_of(overrides), LoraPicker.recorded(meta))
        out.update({
            self.prompt: r.get("prompt", ""),
            self.negative: r.get("negative_prompt") or DEFAULT_NEGATIVE_PROMPT,
            self.solver: r.get("solver") or "unipc",
            self.seed_mode: "fixed",
            self.seed: r.get("seed") if r.get("seed") is not None else 42,
            self.image: None, self.last_image: None,
        })
        note = f"Loaded the settings of {video.name} (seed fixed to {r.get('seed')})."
        if r["model"] in self.ready_ids():
            out[self.model] = gr.update(value=r["model"])
        else:
            note += f" Its model, {spec.name}, is not installed here: install it to make this video again."
        note += self.loras.restore_note(meta, spec)
        needed = [f"the {label} {_image_text(meta[k])}" for k, label in (("image", "first frame"),
                                                                          ("last_image", "last frame"))
                  if isinstance(meta.get(k), dict)]
        hint = ("A video does not keep its images: upload " + " and ".join(needed) + " again to make it again."
                if needed else "")
        out[self.load_msg] = message_html("ok", note, hint)
        return out

    # ------------------------------------------------------------------------------------------ models
    def sync_outputs(self) -> list:
        return list(dict.fromkeys([self.model, self.generate_btn, self.missing, *self.model_outputs()]))

    def sync_models(self, current=None, request: gr.Request = None, image=None, overrides=None) -> dict:
        """The model list as the folders are now (after a rescan, an install, a visit). The chosen model
        and every other control stay as they are while that model is still ready."""
        statuses, note = image_model_status(self.ctx.engine)
        choices = common.runnable_choices(statuses)
        ids = [c[1] for c in choices]
        busy = request is not None and self.ctx.jobs.active(common.session_of(request)) is not None
        value = current if current in ids else (ids[0] if ids else None)
        md = "" if ids else ("### No image-to-video model is ready yet\n"
                             + common.missing_markdown(statuses, self.ctx.engine.models_dirs)
                             + (f"\n\n{note}" if note else ""))
        out = {self.model: gr.update(choices=choices, value=value),
               self.generate_btn: gr.update(interactive=bool(ids) and not busy),
               self.missing: gr.update(value=md, visible=bool(md))}
        if value and value != current:
            out.update(self.model_values(catalog.get(value), image, None, common.overrides_of(overrides)))
        return out

    def on_load(self, last: dict, overrides: dict | None = None) -> dict:
        """The tab as it is for this visit: the image models ready now, this browser's last request."""
        prev = (last or {}).get("i2v") or {}
        ids = self.ready_ids()
        model = prev.get("model") if prev.get("model") in ids else (ids[0] if ids else None)
        out = self.sync_models(model, None, None, overrides)      # the model's controls follow here
        if model:
            spec = catalog.get(model)
            r = {}
            if prev.get("model") == model:
                try:
                    r = self.build_request({**prev, "preset": None}, need_image=False).to_dict()
                except (UserError, ValueError, TypeError):
                    r = {}
            chosen = LoraPicker.from_values(prev) if r else None
            out.update(self.model_values(spec, None, r, common.overrides_of(overrides), chosen,
                                         prev.get("preset") if r else None))
            if r:
                out.update({self.prompt: r.get("prompt", ""),
                            self.negative: prev.get("negative") or DEFAULT_NEGATIVE_PROMPT,
                            self.solver: r.get("solver") or "unipc",
                            self.seed_mode: prev.get("seed_mode") or "random",
                            self.seed: prev.get("seed") if prev.get("seed") is not None else 42})
        choices = self.video_choices()
        out[self.videos] = gr.update(choices=choices, value=choices[0][1] if choices else None)
        return out

    def load_outputs(self) -> list:
        return list(dict.fromkeys([*self.sync_outputs(), self.prompt, self.negative, self.solver, self.seed_mode,
                                   self.seed, self.videos]))


def _image_text(d: dict) -> str:
    name = str(d.get("name") or "?")
    size = f"{d.get('width')}x{d.get('height')}" if d.get("width") else ""
    sha = str(d.get("sha256") or "")[:12]
    return f"'{name}'" + (f" ({size}" + (f", sha256 {sha}…" if sha else "") + ")" if size else "")
