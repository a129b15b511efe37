"""The controls the generation tabs share, built and read in one place.

Text to Video, Image to Video and Extend each have a model, a prompt, a Generate / Stop row with the error
box under it, the negative prompt, a seed, the step cache and the LoRA picker; the two clip tabs also
share the sampling block (steps, shift, solver, CFG per expert, the expert boundary). This module builds
those pieces (same element ids per prefix: `{prefix}-steps`, …), and `ClipTab` holds what the two clip
tabs do with them: the model's defaults in one update, the request's fields, the check that marks a wrong
field, the run through the shared RunView, a loaded video's values, and this browser's last request.
A tab adds only its own fields (the image, the long video's windows) and its own layout.
"""
from __future__ import annotations

import json
import logging

import gradio as gr

from wan_app import catalog
from wan_app.catalog import DEFAULT_NEGATIVE_PROMPT, SOLVERS
from wan_app.errors import UserError
from wan_app.media import read_metadata
from wan_app.request import MAX_SEED, parse_size

from . import common, engine_api
from .cache_setting import CacheSetting, plan_note
from .lora_picker import LoraPicker
from .render import RunView, expert_badge_html, message_html

log = logging.getLogger(__name__)

# Where each UserError field of a request is shown (the engine's field name -> the tab's input name).
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
                   "vae_tiling": "VAE tiling", "experts_resident": "A14B experts kept in RAM",
                   "compile": "Compile the transformer (torch.compile)"}


def problem_at(e: UserError, field_inputs: dict, default: str, labels: dict | None = None) -> tuple[str, str]:
    """(input name, message) for a UserError: at its field, or at the model when Settings caused it."""
    text = e.problem + (f" — {e.fix}" if e.fix else "")
    if e.field in OVERRIDE_LABELS:
        return "model", f"Settings → {OVERRIDE_LABELS[e.field]}: {text}"
    name = field_inputs.get(e.field, default)
    return name, f"{(labels or INPUT_LABELS).get(name, e.field)}: {text}"


def seed_of(v: dict) -> int | None:
    """The fixed seed, None for a random one; UserError naming the seed when it is not one."""
    if v.get("seed_mode") != "fixed" or v.get("seed") in (None, ""):
        return None
    seed = float(v["seed"])
    if seed != int(seed) or not 0 <= seed <= MAX_SEED:
        raise UserError("seed", f"{v['seed']} is not a seed", f"use a whole number from 0 to {MAX_SEED}")
    return int(seed)


def chosen_model(v: dict, fix: str):
    """The spec of the chosen model; UserError at the model field when none is chosen."""
    spec = common.spec_or_none(v.get("model"))
    if spec is None:
        raise UserError("model", "no model is chosen", fix)
    return spec


def metadata_text(meta: dict) -> str:
    return json.dumps(meta, indent=2, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------- builders
def run_row(prefix: str, label: str = "Generate", go_id: str | None = None):
    """(Generate, Stop, the error box right under them). Generate starts disabled: a visit enables it
    once a model is ready."""
    with gr.Row():
        go = gr.Button(label, variant="primary", elem_id=go_id or f"{prefix}-generate", interactive=False)
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop")
    return go, stop, RunView.error_box(prefix)


def negative_prompt(prefix: str) -> gr.Textbox:
    # Folded: the official default is Chinese, unreadable for most users, and rarely edited.
    with gr.Accordion("Negative prompt (the official default is prefilled)", open=False):
        return gr.Textbox(label="Negative prompt", lines=3, show_label=False, value=DEFAULT_NEGATIVE_PROMPT,
                          elem_id=f"{prefix}-negative")


def seed_row(prefix: str, value_label: str = "Seed value (when fixed)"):
    with gr.Row():
        mode = gr.Radio(["random", "fixed"], value="random", label="Seed", elem_id=f"{prefix}-seed-mode")
        seed = gr.Number(value=42, precision=0, label=value_label, elem_id=f"{prefix}-seed")
    return mode, seed


class Sampling:
    """The sampling block of a clip tab: steps, shift, solver, CFG (a second one and the expert boundary
    for A14B), the seed and the step cache. Build inside an open layout block."""

    def __init__(self, prefix: str, *, steps: int, boundary: float, open: bool):
        self.boundary_default = boundary
        with gr.Accordion("Sampling", open=open, elem_id=f"{prefix}-sampling"):
            with gr.Row():
                self.steps = gr.Slider(1, 100, value=steps, step=1, label="Steps", elem_id=f"{prefix}-steps")
                self.shift = gr.Number(value=5.0, label="Shift", elem_id=f"{prefix}-shift")
                self.solver = gr.Dropdown(list(SOLVERS), value="unipc", label="Solver", elem_id=f"{prefix}-solver")
            with gr.Row():
                self.cfg = gr.Number(value=5.0, label="CFG", elem_id=f"{prefix}-cfg")
                self.cfg2 = gr.Number(value=3.0, label="CFG (low-noise expert)", visible=False,
                                      elem_id=f"{prefix}-cfg2")
                self.boundary = gr.Number(value=boundary, step=0.005, label="Expert switch boundary",
                                          visible=False, elem_id=f"{prefix}-boundary")
            self.seed_mode, self.seed = seed_row(prefix)
            self.cache = CacheSetting(prefix)

    def inputs(self) -> dict:
        return {"steps": self.steps, "shift": self.shift, "cfg": self.cfg, "cfg2": self.cfg2,
                "boundary": self.boundary, "solver": self.solver, "seed_mode": self.seed_mode, "seed": self.seed,
                **self.cache.inputs()}

    def preset_fields(self) -> dict:
        """Request field -> control, for what a few-step preset sets."""
        return {"steps": self.steps, "guidance": self.cfg, "guidance_2": self.cfg2, "shift": self.shift,
                "solver": self.solver, "boundary": self.boundary}

    def request_fields(self, v: dict, spec) -> dict:
        a14b = spec.experts == 2
        num = lambda k, kind=float: None if v.get(k) in (None, "") else kind(v[k])  # noqa: E731
        return dict(steps=num("steps", int), shift=num("shift"), guidance=num("cfg"),
                    guidance_2=num("cfg2") if a14b else None, boundary=num("boundary") if a14b else None,
                    solver=v.get("solver") or "unipc", seed=seed_of(v), **self.cache.fields(v))

    def for_model(self, spec, r: dict) -> dict:
        """The model's official values, or `r`'s (a request's fields) where it has them."""
        a14b = spec.experts == 2
        pick = lambda k, default: r[k] if r.get(k) is not None else default  # noqa: E731
        return {
            self.steps: pick("steps", spec.steps),
            self.shift: pick("shift", spec.shift),
            self.cfg: gr.update(value=pick("guidance", spec.guidance),
                                label="CFG (high-noise expert)" if a14b else "CFG"),
            self.cfg2: gr.update(value=pick("guidance_2", spec.guidance_2 if a14b else 3.0), visible=a14b),
            self.boundary: gr.update(value=pick("boundary", spec.boundary if a14b else self.boundary_default),
                                     visible=a14b),
            **self.cache.for_model(spec, r),
        }

    def outputs(self) -> list:
        return [self.steps, self.shift, self.cfg, self.cfg2, self.boundary, *self.cache.outputs()]

    def restored(self, r: dict) -> dict:
        """A video's solver and seed (fixed, so that the video can be made again)."""
        return {self.solver: r.get("solver") or "unipc", self.seed_mode: "fixed",
                self.seed: r.get("seed") if r.get("seed") is not None else 42}

    def remembered(self, r: dict, prev: dict) -> dict:
        """This browser's last solver and seed choice."""
        return {self.solver: r.get("solver") or "unipc", self.seed_mode: prev.get("seed_mode") or "random",
                self.seed: prev.get("seed") if prev.get("seed") is not None else 42}


# ---------------------------------------------------------------------------------------------- tabs
class JobChecks:
    """The check before a job is queued, for every generation tab: the engine's own rules and the plan's
    blocker, with nothing loaded; what is wrong is marked at its field. A tab gives `FIELDS`/`LABELS`
    (engine field -> input name -> label), `build_request(v)`, `ready_ids()`, `cache`, `loras`, `ctx`."""

    FIELDS = FIELD_INPUTS
    LABELS = INPUT_LABELS

    @staticmethod
    def base_of(job):
        """The clip request inside a job (a long video's is its `base`)."""
        return getattr(job, "base", job)

    def field_inputs(self) -> dict:
        return {**self.FIELDS, **self.cache.field_inputs(), **self.loras.field_inputs()}

    def problem(self, e: UserError) -> tuple[str, str]:
        return problem_at(e, self.field_inputs(), "prompt", self.LABELS)

    def check(self, v: dict) -> dict:
        """{input name: message} for what is wrong."""
        try:
            job = self.build_request(v)
            base = self.base_of(job)
            if base.model not in self.ready_ids():
                raise UserError("model", f"{catalog.get(base.model).name} is not installed here",
                                "install its files (see the list of models) or pick another model")
            resolved, _ = engine_api.check_request(base)
            p = engine_api.plan(self.ctx.engine, resolved if job is base else job,
                                common.overrides_of(v.get("overrides")))
            if p.blocker:
                raise UserError(p.blocker["field"], p.blocker["problem"], p.blocker["fix"])
        except UserError as e:
            return dict([self.problem(e)])
        except Exception as e:  # noqa: BLE001 - a check must not take the button down
            log.exception("checking the request failed")
            return {"prompt": f"Could not check this request: {type(e).__name__}: {e}"}
        return {}


class ClipTab(JobChecks):
    """What Text to Video and Image to Video share. A subclass builds `model`, `prompt`, `negative`,
    `size`, `frames`, `frames_note`, `sampling` (Sampling), `loras` (LoraPicker), `view` (RunView),
    `seed_used`, `info` and `load_msg`, and gives `KIND` (its job kind and key in the browser's memory),
    `NOT_REMEMBERED` (inputs kept out of that memory), `FIELDS`/`LABELS` (where errors go), and
    `build_request(v)`, `ready_ids()`, `note_request(v)` (the request the cache note plans)."""

    KIND = "clip"
    NOT_REMEMBERED: tuple = ()

    def __init__(self, ctx, page):
        """Builds the tab inside an open gr.Blocks (`page`: ui.runs.Page, the visit's state)."""
        self.ctx, self.page = ctx, page
        self.build()

    # the sampling block's controls, by the names the tab's handlers and tests use
    steps = property(lambda self: self.sampling.steps)
    shift = property(lambda self: self.sampling.shift)
    solver = property(lambda self: self.sampling.solver)
    cfg = property(lambda self: self.sampling.cfg)
    cfg2 = property(lambda self: self.sampling.cfg2)
    boundary = property(lambda self: self.sampling.boundary)
    seed_mode = property(lambda self: self.sampling.seed_mode)
    seed = property(lambda self: self.sampling.seed)
    cache = property(lambda self: self.sampling.cache)

    # ---- values ---------------------------------------------------------------------------------
    def common_inputs(self) -> dict:
        return {"model": self.model, "prompt": self.prompt, "negative": self.negative, "size": self.size,
                "frames": self.frames, **self.sampling.inputs(), **self.loras.inputs()}

    def clip_fields(self, v: dict, spec) -> dict:
        """The Request fields every clip tab reads the same way (not the model, the size or an image)."""
        num_frames = None if v.get("frames") in (None, "") else int(v["frames"])
        return dict(prompt=v.get("prompt") or "", negative_prompt=v.get("negative"), frames=num_frames,
                    **self.sampling.request_fields(v, spec))

    def frames_values(self, spec, w: int, h: int, frames, overrides, loaded: bool = False) -> dict:
        """The frames slider's range at this size on this machine, and the sentence saying why (and, for
        a `loaded` request, that it had more frames than fit)."""
        limit, why = common.frames_limit(self.ctx.engine, spec, w, h, overrides)
        frames = frames or spec.frames
        if loaded and frames > limit:
            why += f" This video had {frames} frames."
        return {self.frames: gr.update(maximum=max(limit, 1), value=common.snap_frames(frames, max(limit, 1))),
                self.frames_note: why}

    def sampling_values(self, spec, r: dict | None, loras: list | None, preset: str | None) -> dict:
        """The sampling block, the badge and the LoRA picker for `spec`: one update with the rest."""
        r = r or {}
        return {**self.sampling.for_model(spec, r), self.view.badge: expert_badge_html(None),
                **self.loras.for_model(spec, loras, preset)}

    def sampling_outputs(self) -> list:
        return [*self.sampling.outputs(), self.view.badge, *self.loras.outputs()]

    # ---- events ---------------------------------------------------------------------------------
    def wire_common(self, run_outputs: list, api_name: str, ready) -> None:
        """Generate → the job (and this browser's memory of it), the LoRA picker, the cache note."""
        from .runs import Runner
        page = self.page
        self.runner = Runner(self.KIND, self.generate_btn, "Generate", self.view, ready=ready)
        page.add_runner(self.runner, self.stop_btn, self.inputs(), run_outputs, self.check, self.generate,
                        api_name=api_name)
        kept = [c for k, c in self.inputs().items() if k not in self.NOT_REMEMBERED]
        self.generate_btn.click(self.remember, [page.last, *kept], [page.last], queue=False,
                                show_progress="hidden", api_visibility="private")
        self.loras.wire(self.model, self.sampling.preset_fields(), self.view.error)
        self.cache.wire(self.cache_note, [page.overrides, *self.inputs().values()], [self.steps.release])

    def remember(self, last, *values):
        """The last request of this browser, kept in the browser (the settings file is written only by
        Save): a reload opens where the user left off."""
        names = [k for k in self.inputs() if k not in self.NOT_REMEMBERED]
        last = dict(last or {})
        last[self.KIND] = dict(zip(names, values))
        return last

    def cache_note(self, overrides, *values) -> str:
        v = dict(zip(self.inputs(), values))
        try:
            # what the cache skips depends on the model and the steps, not on the prompt or an image
            req = self.note_request({**v, "prompt": v.get("prompt") or "-", "preset": None})
        except UserError as e:
            return f"{e.field}: {e.problem}"
        return plan_note(self.ctx.engine, req, overrides)

    def on_size(self, model_id, size, frames, overrides):
        spec = common.spec_or_none(model_id)
        if spec is None or not size:
            return {}
        try:
            w, h = parse_size(size)
        except UserError as e:
            return {self.frames_note: f"Size: {e.problem} — {e.fix}"}
        return self.frames_values(spec, w, h, frames, common.overrides_of(overrides))

    # ---- the run --------------------------------------------------------------------------------
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
        return {self.seed_used: "" if used is None else str(used), self.info: metadata_text(ev.metadata)}

    # ---- a video's settings, this browser's last request ---------------------------------------------
    def video_settings(self, path, missing: str):
        """(video, metadata, request, spec) of one of the app's own videos made by this app, or
        (None, {load_msg: why not}, None, None)."""
        video = self.ctx.policy.video(path) if path else None
        if video is None:
            return None, {self.load_msg: message_html("error", missing)}, None, None
        meta = read_metadata(video) or {}
        r = meta.get("request")
        if not isinstance(r, dict) or r.get("model") not in catalog.MODELS:
            return None, {self.load_msg: message_html("error", f"{video.name} has no settings of this app in it.")}, \
                None, None
        return video, meta, r, catalog.get(r["model"])

    def restored(self, video, meta: dict, r: dict, spec) -> tuple[dict, str]:
        """The prompt, negative prompt, solver, seed and model of a video (the model only when it is
        ready here), and the message's first sentences."""
        out = {self.prompt: r.get("prompt", ""), self.negative: r.get("negative_prompt") or DEFAULT_NEGATIVE_PROMPT,
               **self.sampling.restored(r)}
        note = f"Loaded the settings of {video.name} (seed fixed to {r.get('seed')})."
        if r["model"] in self.ready_ids():
            out[self.model] = gr.update(value=r["model"])
        else:
            note += f" Its model, {spec.name}, is not installed here: install it to make this video again."
        return out, note + self.loras.restore_note(meta, spec)

    def restore_outputs(self) -> list:
        """What Load settings updates, in one event."""
        return list(dict.fromkeys([self.model, self.prompt, self.negative, *self.model_outputs(), self.solver,
                                   self.seed_mode, self.seed, self.load_msg]))

    def last_visit(self, last: dict, model: str, overrides) -> dict:
        """`model`'s controls with this browser's last values on this tab, when they were for it."""
        prev, r = self.last_request(last, model)
        out = self.model_values(catalog.get(model), r, common.overrides_of(overrides),
                                LoraPicker.from_values(prev) if r else None, prev.get("preset") if r else None)
        if r:
            out.update(self.remembered(prev, r))
        return out

    def last_request(self, last: dict, model: str) -> tuple[dict, dict]:
        """(this browser's last values on this tab, the request they make) when they were for `model`;
        empty when they were not or no longer make a request."""
        prev = (last or {}).get(self.KIND) or {}
        if prev.get("model") != model:
            return prev, {}
        try:
            return prev, self.note_request({**prev, "preset": None}).to_dict()
        except (UserError, ValueError, TypeError):
            return prev, {}

    def remembered(self, prev: dict, r: dict) -> dict:
        return {self.prompt: r.get("prompt", ""), self.negative: prev.get("negative") or DEFAULT_NEGATIVE_PROMPT,
                **self.sampling.remembered(r, prev)}


__all__ = ["ClipTab", "FIELD_INPUTS", "INPUT_LABELS", "JobChecks", "OVERRIDE_LABELS", "Sampling", "chosen_model",
           "metadata_text", "negative_prompt", "problem_at", "run_row", "seed_of", "seed_row"]
