"""The Settings tab: the machine, the memory plan for the current choices and why, the overrides, the
folders and the defaults, and the models.

Overrides belong to this browser tab until Save: a change is checked at once against the chosen model and
this machine (ranges follow both) and refused with a message naming the field when it cannot work, so an
override that breaks every run can neither be used nor saved. Save writes the settings file, merged with
what is on disk, and is what other visits start from. Folders can be changed only by the owner at this
computer (see AppContext.owner_at_machine).
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from wan_app import catalog
from wan_app.errors import UserError
from wan_app.plan_types import DTYPES, Overrides
from wan_app.request import parse_size
from wan_app.settings import EXPERTS_RESIDENT, save_settings

from . import common, engine_api
from .common import AppContext
from .models_panel import ModelsPanel
from .render import message_html, plan_html
from .runs import Page
from .generation_controls import OVERRIDE_LABELS

AUTO = "auto"
NAMES = ("blocks_swapped", "weight_dtype", "attention", "vae_tiling", "text_encoder", "experts_resident", "compile")
assert set(NAMES) == set(Overrides.__dataclass_fields__), "a new override needs its control here"


def _choice(value) -> str:
    if value is None:
        return AUTO
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _unchoice(value, kind=str):
    if value in (None, "", AUTO):
        return None
    if kind is bool:
        return value == "on"
    return kind(value)


def attention_choices(hw) -> list[str]:
    """auto, the optional kernels that imported *and* ran on this machine, and the two always there."""
    ran = set(getattr(hw, "attention", []) or [])
    return [AUTO, *[k for k in ("sage", "flash") if k in ran], "sdpa", "native"]


def has_gpu(hw) -> bool:
    return bool(getattr(hw, "gpus", None))


class SettingsTab:
    def __init__(self, ctx: AppContext, page: Page, t2v):
        self.ctx, self.page, self.t2v = ctx, page, t2v
        self.build()

    def build(self) -> None:
        hw = self.ctx.engine.hardware
        gpu = has_gpu(hw)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                gr.Markdown("### This machine")
                text = common.hardware_text(hw)
                gr.Textbox(text, label="Detected hardware", interactive=False, lines=max(4, text.count("\n") + 1),
                           elem_id="wan-hw")
                gr.Markdown("### Memory plan for the current choices")
                self.plan = gr.HTML("", elem_id="wan-plan")
            with gr.Column(scale=1):
                gr.Markdown("### Overrides\nLeave them on auto unless you know why. A change applies to your "
                            "runs in this browser tab at once; **Save settings** makes it the default.")
                with gr.Row():
                    self.blocks = gr.Slider(-1, 40, value=-1, step=1, label="Blocks swapped to CPU (-1 = auto)",
                                            interactive=gpu, elem_id="wan-blocks",
                                            info=None if gpu else "block swap needs an NVIDIA GPU")
                    self.dtype = gr.Dropdown([AUTO, *DTYPES], value=AUTO, label="Transformer weight dtype",
                                             elem_id="wan-dtype")
                with gr.Row():
                    self.attention = gr.Dropdown(attention_choices(hw), value=AUTO, label="Attention kernel",
                                                 elem_id="wan-attention")
                    self.tiling = gr.Dropdown([AUTO, "on", "off"], value=AUTO, label="VAE tiling",
                                              elem_id="wan-tiling")
                with gr.Row():
                    self.text_enc = gr.Dropdown([AUTO, "cpu"] + (["gpu"] if gpu or hw.mps else []), value=AUTO,
                                                label="Text encoder runs on", elem_id="wan-text-encoder")
                    self.experts = gr.Dropdown([AUTO, *EXPERTS_RESIDENT], value=AUTO, label="A14B experts kept in RAM",
                                               elem_id="wan-experts")
                no_compile = engine_api.compile_unavailable(hw)
                # "on" only where it can run; an API client that sends it anyway is refused by the check
                self.compile = gr.Dropdown([AUTO, "off"] + ([] if no_compile else ["on"]), value=AUTO,
                                           label="Compile the transformer (torch.compile)", elem_id="wan-compile",
                                           info=no_compile or "auto: off until it is measured on this GPU")
                self.override_msg = gr.HTML("", elem_id="wan-override-msg")
                gr.Markdown("### Folders and defaults")
                self.models_dirs = gr.Textbox("", lines=2, elem_id="wan-models-dirs",
                                              label="Model folders, one per line (a ComfyUI models folder works)")
                self.outputs_dir = gr.Textbox("", label="Outputs folder (takes effect at the next start)",
                                              elem_id="wan-outputs-dir")
                self.folders_note = gr.Markdown("", visible=False)
                self.default_model = gr.Dropdown([("(first ready model)", "")] +
                                                 [(m.name, m.id) for m in catalog.MODELS.values()],
                                                 value="", label="Default model", elem_id="wan-default-model")
                self.save_btn = gr.Button("Save settings", variant="primary", elem_id="wan-save")
                self.save_msg = gr.HTML("", elem_id="wan-save-msg")
        self.models = ModelsPanel(self.ctx, first_run=False)
        self.wire()

    def controls(self) -> dict:
        return {"blocks_swapped": self.blocks, "weight_dtype": self.dtype, "attention": self.attention,
                "vae_tiling": self.tiling, "text_encoder": self.text_enc, "experts_resident": self.experts,
                "compile": self.compile}

    # ------------------------------------------------------------------------------------------ values
    @staticmethod
    def overrides_from(blocks, dtype, attention, tiling, text_enc, experts, compile=AUTO) -> Overrides:
        return Overrides(blocks_swapped=None if blocks is None or int(blocks) < 0 else int(blocks),
                         weight_dtype=_unchoice(dtype), attention=_unchoice(attention),
                         vae_tiling=_unchoice(tiling, bool), text_encoder=_unchoice(text_enc),
                         experts_resident=_unchoice(experts), compile=_unchoice(compile, bool))

    def control_values(self, ov: Overrides) -> dict:
        return {self.blocks: -1 if ov.blocks_swapped is None else ov.blocks_swapped,
                self.dtype: _choice(ov.weight_dtype), self.attention: _choice(ov.attention),
                self.tiling: _choice(ov.vae_tiling), self.text_enc: _choice(ov.text_encoder),
                self.experts: _choice(ov.experts_resident), self.compile: _choice(ov.compile)}

    def plan_preview(self, model_id, size, frames, overrides: Overrides) -> str:
        spec = common.spec_or_none(model_id)
        if spec is None:
            return message_html("info", "Choose a model on the Text to Video tab to see its memory plan.")
        w, h = parse_size(size) if size else spec.default_size
        frames = int(frames or spec.frames)
        try:
            p = engine_api.plan_size(self.ctx.engine, spec, w, h, frames, overrides)
        except UserError as e:
            return message_html("error", common.user_error_text(e))
        return plan_html(p, f"{spec.name}, {w}x{h}, {frames} frames", spec.experts)

    def check(self, spec, ov: Overrides) -> None:
        """UserError naming the field when `ov` cannot work for `spec` here."""
        if spec is not None:
            engine_api.validate_overrides(self.ctx.engine, spec, ov)

    # ------------------------------------------------------------------------------------------ events
    def wire(self) -> None:
        t, page = self.t2v, self.page
        plan_inputs = [t.model, t.size, t.frames, page.overrides]
        # After the events that change the choices, not on .change: a programmatic update must not
        # send the old frame count against the new model's range.
        for ev in t.choice_events:
            ev.then(self.replan, plan_inputs, [self.plan, self.blocks], show_progress="hidden",
                    api_visibility="private")
        inputs = [*self.controls().values(), t.model, t.size, t.frames, page.overrides]
        for comp in self.controls().values():
            comp.input(self.apply_overrides, inputs,
                       [page.overrides, *self.controls().values(), self.override_msg, self.plan],
                       show_progress="hidden", api_visibility="private")
        # the API's order: the first six overrides, the folders, the default model, then compile (added
        # later, last, so that clients written before it still call Save the same way)
        c = self.controls()
        ev = self.save_btn.click(self.save, [*(c[n] for n in NAMES[:6]), self.models_dirs, self.outputs_dir,
                                             self.default_model, c["compile"]],
                                 [self.save_msg, page.overrides], api_name="save_settings")
        self.model_list_events = [ev.then(t.rescan, [t.model, page.overrides], t.rescan_outputs(),
                                          show_progress="hidden", api_visibility="private")]
        self.model_list_events += self.models.wire(after=(t.rescan, [t.model, page.overrides],
                                                          t.rescan_outputs()))

    def replan(self, model_id, size, frames, overrides):
        spec = common.spec_or_none(model_id)
        out = {self.plan: self.plan_preview(model_id, size, frames, common.overrides_of(overrides))}
        if spec is not None:
            out[self.blocks] = self.blocks_range(spec, common.overrides_of(overrides))
        return out

    def blocks_range(self, spec, ov: Overrides):
        """The blocks slider goes up to the chosen model's layer count (a value past it is shown at the
        end; the run's check names it)."""
        n = spec.arch.num_layers
        value = -1 if ov.blocks_swapped is None else min(ov.blocks_swapped, n)
        return gr.update(maximum=n, value=value)

    def apply_overrides(self, blocks, dtype, attention, tiling, text_enc, experts, compile, model_id, size, frames,
                        current):
        """A change applies to this tab's runs once it is valid for the chosen model and this machine;
        otherwise the controls go back to what applies, and the message says why."""
        ov = self.overrides_from(blocks, dtype, attention, tiling, text_enc, experts, compile)
        try:
            self.check(common.spec_or_none(model_id), ov)
        except UserError as e:
            back = common.overrides_of(current)
            label = OVERRIDE_LABELS.get(e.field, e.field)
            return {**self.control_values(back),
                    self.override_msg: message_html("error", f"{label}: {e.problem}", e.fix + " (not applied)")}
        return {self.page.overrides: ov.to_dict(),
                self.override_msg: message_html("info", "Applies to your runs in this tab. Save settings to "
                                                "keep it."),
                self.plan: self.plan_preview(model_id, size, frames, ov)}

    def save(self, blocks, dtype, attention, tiling, text_enc, experts, models_dirs, outputs_dir, default_model,
             compile=AUTO, request: gr.Request = None):
        ctx = self.ctx
        ov = self.overrides_from(blocks, dtype, attention, tiling, text_enc, experts, compile)
        saved = ctx.saved_settings()
        dirs = [d.strip() for d in (models_dirs or "").splitlines() if d.strip()]
        out_text = (outputs_dir or "").strip()
        fail = lambda text, hint="": {self.save_msg: message_html("error", text, hint)}  # noqa: E731
        # Overrides: every ready model must accept them, or every run with that model would fail.
        ready = self.t2v.ready_ids()
        for model_id in ready:
            try:
                self.check(catalog.get(model_id), ov)
            except UserError as e:
                return fail(f"{OVERRIDE_LABELS.get(e.field, e.field)}: {e.problem} "
                            f"(with {catalog.get(model_id).name})", (e.fix or "") + " — nothing was saved")
        folders_changed = (dirs != list(saved.models_dirs)) or (out_text != saved.outputs_dir)
        if folders_changed and not ctx.owner_at_machine(request):
            return fail("Folders can be changed only at the computer the app runs on, when it is not shared.",
                        "start it with --models-dir / --outputs-dir there — nothing was saved")
        if not dirs:
            return fail("Model folders: give at least one folder.")
        missing = [d for d in dirs if not Path(d).expanduser().is_dir()]
        if missing:
            return fail(f"Model folders: not found: {', '.join(missing)}", "create it or correct the path")
        if out_text != saved.outputs_dir:
            try:
                common.check_outputs_folder(out_text, dirs)
            except UserError as e:
                return fail(f"Outputs folder: {e.problem}", e.fix)
        new = type(saved)(**{**saved.to_dict(), "models_dirs": dirs, "outputs_dir": out_text,
                             "default_model": default_model or None, "overrides": ov.to_dict()})
        try:
            if ctx.settings_path is not None:
                save_settings(new, ctx.settings_path)
        except UserError as e:
            return fail(f"{e.field}: {e.problem}", e.fix)
        except OSError as e:
            return fail(f"Could not write {ctx.settings_path}: {e.strerror}")
        ctx.settings = new
        new_dirs = [Path(d).expanduser() for d in dirs]
        if new_dirs != list(ctx.engine.models_dirs):
            ctx.engine.models_dirs = new_dirs
        note = "Saved." if ctx.settings_path is not None else "Applied (this run does not persist settings)."
        if Path(out_text).expanduser().resolve() != ctx.outputs_dir.resolve():
            note += " The new outputs folder is used from the next start."
        return {self.save_msg: message_html("ok", note), self.page.overrides: ov.to_dict()}

    # ------------------------------------------------------------------------------------------ visits
    def usable(self, ov: Overrides, model_id: str | None) -> tuple[Overrides, str]:
        """The saved overrides minus any that cannot work for this model here (an older version, another
        machine), and a message naming what was dropped."""
        spec = common.spec_or_none(model_id)
        dropped = []
        for _ in range(len(NAMES)):
            try:
                self.check(spec, ov)
                break
            except UserError as e:
                if e.field not in NAMES or getattr(ov, e.field) is None:
                    break
                dropped.append(f"{OVERRIDE_LABELS.get(e.field, e.field)} ({e.problem})")
                ov = Overrides(**{**ov.__dict__, e.field: None})
        msg = ("Saved overrides that cannot work here are on auto: " + "; ".join(dropped)) if dropped else ""
        return ov, msg

    def on_load(self, request: gr.Request, model_id: str | None = None) -> dict:
        saved = self.ctx.saved_settings()
        ov, dropped = self.usable(saved.overrides_obj(), model_id)
        owner = self.ctx.owner_at_machine(request)
        where = str(self.ctx.settings_path) if self.ctx.settings_path else "nowhere (not persisted in this run)"
        spec = common.spec_or_none(model_id)
        out = {**self.control_values(ov), self.page.overrides: ov.to_dict(),
               **({self.blocks: self.blocks_range(spec, ov)} if spec is not None else {}),
               self.models_dirs: gr.update(value="\n".join(saved.models_dirs), interactive=owner),
               self.outputs_dir: gr.update(value=saved.outputs_dir, interactive=owner),
               self.folders_note: gr.update(visible=not owner, value=(
                   "The folders can be changed only at the computer the app runs on, when it is not shared "
                   "(`--models-dir`, `--outputs-dir`).")),
               self.default_model: saved.default_model or "",
               self.save_msg: message_html("info", f"Settings file: {where}"),
               self.override_msg: message_html("error", dropped) if dropped else ""}
        return out

    def load_outputs(self) -> list:
        return [*self.controls().values(), self.page.overrides, self.models_dirs, self.outputs_dir,
                self.folders_note, self.default_model, self.save_msg, self.override_msg]
