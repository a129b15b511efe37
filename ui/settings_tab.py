"""The Settings tab: the detected hardware, the memory plan for the current choices and why, the overrides,
the folders and the defaults, saved to the settings file."""
from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from wan_app import catalog
from wan_app.errors import UserError
from wan_app.plan_types import ATTENTION_BACKENDS, DTYPES, TEXT_ENCODER_PLACES, Overrides
from wan_app.request import parse_size
from wan_app.settings import EXPERTS_RESIDENT, save_settings

from . import common
from .common import AppContext

AUTO = "auto"


def _choice(value) -> str:
    if value is None:
        return AUTO
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _unchoice(value: str, kind=str):
    if value in (None, "", AUTO):
        return None
    if kind is bool:
        return value == "on"
    return kind(value)


def plan_html(engine, model_id, size, frames) -> str:
    spec = common.spec_or_none(model_id)
    if spec is None:
        return common.message_html("info", "Choose a model on the Text to Video tab to see its memory plan.")
    w, h = parse_size(size) if size else spec.default_size
    frames = int(frames or spec.frames)
    p, err = common.plan_for(engine, spec, w, h, frames)
    if p is None:
        return common.message_html("error", err)
    rows = [("Model", spec.name), ("Video", f"{w}x{h}, {frames} frames"), ("Device", p.device),
            ("Compute dtype", p.compute_dtype), ("Transformer weights", p.weight_dtype),
            ("Blocks swapped to CPU", f"{p.blocks_swapped} of {p.blocks_total}"),
            ("Text encoder", f"{p.text_encoder_device} ({p.text_encoder_dtype})"),
            ("Attention", p.attention_backend), ("VAE tiling", "on" if p.vae_tiling else "off"),
            ("Most frames at this size", str(p.max_frames)),
            ("Estimated peak", common.peak_text(p))]
    if spec.experts == 2:
        rows.append(("A14B experts in RAM", p.experts_resident))
    forced = set(p.forced or [])
    table = "".join(f"<tr><th style='text-align:left;padding-right:16px'>{html.escape(k)}</th>"
                    f"<td>{html.escape(v)}</td></tr>" for k, v in rows)
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in p.reasons)
    forced_note = (f"<p>Forced by your overrides: {html.escape(', '.join(sorted(forced)))}</p>" if forced else "")
    return (f"<div class='wan-plan' data-max-frames='{p.max_frames}'><table>{table}</table>{forced_note}"
            f"<p><b>Why</b></p><ul class='wan-reasons'>{reasons}</ul></div>")


class SettingsTab:
    def __init__(self, ctx: AppContext, t2v):
        self.ctx = ctx
        self.t2v = t2v
        self.build()

    def build(self) -> None:
        ctx, s = self.ctx, self.ctx.settings
        ov = s.overrides_obj()
        t = self.t2v
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                gr.Markdown("### This machine")
                gr.Textbox(ctx.engine.hardware.describe(), label="Detected hardware", interactive=False,
                           lines=max(4, ctx.engine.hardware.describe().count("\n") + 1), elem_id="wan-hw")
                gr.Markdown("### Memory plan for the current choices")
                self.plan = gr.HTML(plan_html(ctx.engine, t.model.value, t.size.value, t.frames.value),
                                    elem_id="wan-plan")
            with gr.Column(scale=1):
                gr.Markdown("### Overrides (leave on auto unless you know why)")
                with gr.Row():
                    self.blocks = gr.Slider(-1, 40, value=-1 if ov.blocks_swapped is None else ov.blocks_swapped,
                                            step=1, label="Blocks swapped to CPU (-1 = auto)")
                    self.dtype = gr.Dropdown([AUTO, *DTYPES], value=_choice(ov.weight_dtype),
                                             label="Transformer weight dtype")
                with gr.Row():
                    self.attention = gr.Dropdown(list(ATTENTION_BACKENDS), value=_choice(ov.attention),
                                                 label="Attention kernel")
                    self.tiling = gr.Dropdown([AUTO, "on", "off"], value=_choice(ov.vae_tiling),
                                              label="VAE tiling")
                with gr.Row():
                    self.text_enc = gr.Dropdown(list(TEXT_ENCODER_PLACES), value=_choice(ov.text_encoder),
                                                label="Text encoder runs on")
                    self.experts = gr.Dropdown([AUTO, *EXPERTS_RESIDENT], value=_choice(ov.experts_resident),
                                               label="A14B experts kept in RAM")
                gr.Markdown("### Folders and defaults")
                self.models_dirs = gr.Textbox("\n".join(s.models_dirs), lines=2,
                                              label="Model folders, one per line (a ComfyUI models folder works)")
                self.outputs_dir = gr.Textbox(s.outputs_dir, label="Outputs folder (takes effect at the next start)")
                self.default_model = gr.Dropdown([("(first ready model)", "")] +
                                                 [(m.name, m.id) for m in catalog.MODELS.values()],
                                                 value=s.default_model or "", label="Default model")
                where = str(ctx.settings_path) if ctx.settings_path else "nowhere (not persisted in this run)"
                self.save_btn = gr.Button("Save settings", variant="primary")
                self.save_msg = gr.HTML(common.message_html("info", f"Settings file: {where}"))
        self.wire()

    def override_inputs(self) -> list:
        return [self.blocks, self.dtype, self.attention, self.tiling, self.text_enc, self.experts]

    def wire(self) -> None:
        t = self.t2v
        plan_inputs = [t.model, t.size, t.frames]
        for comp in plan_inputs:
            comp.change(self.replan, plan_inputs, [self.plan], api_visibility="private")
        for comp in self.override_inputs():
            comp.change(self.apply_overrides, self.override_inputs() + plan_inputs, [self.plan],
                        api_visibility="private")
        self.save_btn.click(self.save, self.override_inputs() + [self.models_dirs, self.outputs_dir,
                                                                 self.default_model],
                            [self.save_msg, t.model, t.missing, t.missing_more, t.missing_acc, t.setup_box,
                             t.generate_btn, t.download_model], api_name="save_settings")

    def replan(self, model_id, size, frames):
        return plan_html(self.ctx.engine, model_id, size, frames)

    @staticmethod
    def overrides_from(blocks, dtype, attention, tiling, text_enc, experts) -> Overrides:
        return Overrides(blocks_swapped=None if blocks is None or int(blocks) < 0 else int(blocks),
                         weight_dtype=_unchoice(dtype), attention=_unchoice(attention),
                         vae_tiling=_unchoice(tiling, bool), text_encoder=_unchoice(text_enc),
                         experts_resident=_unchoice(experts))

    def apply_overrides(self, blocks, dtype, attention, tiling, text_enc, experts, model_id, size, frames):
        """Overrides apply to the next run at once (the plan is shown live); Save makes them permanent."""
        self.ctx.engine.overrides = self.overrides_from(blocks, dtype, attention, tiling, text_enc, experts)
        return plan_html(self.ctx.engine, model_id, size, frames)

    def save(self, blocks, dtype, attention, tiling, text_enc, experts, models_dirs, outputs_dir, default_model):
        ctx = self.ctx
        skip = (gr.skip(),) * 7
        ov = self.overrides_from(blocks, dtype, attention, tiling, text_enc, experts)
        dirs = [d.strip() for d in (models_dirs or "").splitlines() if d.strip()]
        s = ctx.settings
        new = type(s)(**{**s.to_dict(), "models_dirs": dirs, "outputs_dir": (outputs_dir or "").strip(),
                         "default_model": default_model or None, "overrides": ov.to_dict()})
        if not dirs:
            return (common.message_html("error", "Model folders: give at least one folder."),) + skip
        missing = [d for d in dirs if not Path(d).expanduser().is_dir()]
        if missing:
            return (common.message_html("error", f"Model folder not found: {', '.join(missing)}",
                                        "create it or correct the path"),) + skip
        try:
            if ctx.settings_path is not None:
                save_settings(new, ctx.settings_path)
        except UserError as e:
            return (common.message_html("error", f"{e.field}: {e.problem}", e.fix),) + skip
        except OSError as e:
            return (common.message_html("error", f"Could not write {ctx.settings_path}: {e.strerror}"),) + skip
        ctx.settings = new
        ctx.engine.overrides = ov
        ctx.engine.models_dirs = [Path(d).expanduser() for d in dirs]
        note = "Saved." if ctx.settings_path is not None else "Applied (this run does not persist settings)."
        if Path(new.outputs_dir).expanduser().resolve() != ctx.outputs_dir.resolve():
            note += " The new outputs folder is used from the next start (the running app serves only the current one)."
        return (common.message_html("ok", note),) + t_rescan(self.t2v)


def t_rescan(t2v):
    return t2v.rescan()
