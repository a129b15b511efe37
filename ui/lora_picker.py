"""The LoRA picker and the few-step preset menu, one per generation tab.

A fixed number of slots (a LoRA and its strength; A14B: a high-noise and a low-noise strength), because an
event's inputs are fixed when the page is built: the slots are what an API client fills in too. The next
slot appears once one is used. Only LoRAs that fit the chosen model are offered (their shapes, read from
the headers by wan_app.lora); a high/low pair of files is one choice.

A preset puts its authors' sampling settings into the tab's fields when it is picked (they stay
editable: what the fields say is what runs) and adds its LoRA files when the job is built
(`presets.apply`); a missing file is named with where it goes, beside Generate.
"""
from __future__ import annotations

import html
import logging
from dataclasses import replace
from functools import partial

import gradio as gr

from wan_app import lora
from wan_app.errors import UserError
from wan_app.lora import presets as lora_presets

from . import common
from .common import DOWNLOADS
from .render import EMPTY, message_html

log = logging.getLogger(__name__)

SLOTS = 3
LO, HI = lora.STRENGTH_RANGE          # the engine's bound (−4…4)
NO_PRESET = ""
# preset attribute -> the Request field it sets (the tab maps those to its inputs)
PRESET_FIELDS = ("steps", "guidance", "guidance_2", "shift", "solver", "boundary")


def fitting_items(models_dirs, spec) -> list:
    """The LoRAs under the models folders' loras/ that fit `spec`, as picked (a pair is one item)."""
    if spec is None:
        return []
    try:
        files = lora.find_loras(models_dirs)
    except Exception:  # noqa: BLE001 - an unreadable folder must not take the tab down
        log.exception("listing LoRAs failed")
        return []
    two = spec.experts == 2
    return [it for it in lora.group_items(files)
            if all(spec.id in f.fits for f in it.files) and (two or not it.is_pair)]


def item_choices(items) -> list[tuple[str, str]]:
    return [(f"{it.name} ({it.files[0].base}{', high+low pair' if it.is_pair else ''})", it.name)
            for it in items]


def default_strengths(item) -> tuple[float, float]:
    """(high, low) for a newly picked item: a lone file named for one A14B expert loads on that expert
    only (0 for the other), as `lora.resolve` does for a file given with one strength."""
    expert = None if item is None or item.is_pair else item.files[0].expert
    return (0.0 if expert == "low" else 1.0), (0.0 if expert == "high" else 1.0)


class LoraPicker:
    """Build inside an open layout block. `prefix` makes the element ids (`{prefix}-lora0`, …)."""

    def __init__(self, ctx, prefix: str, *, with_presets: bool = True):
        self.ctx, self.prefix = ctx, prefix
        self.slots: list[tuple[gr.Group, gr.Dropdown, gr.Slider, gr.Slider]] = []
        self.preset = self.preset_note = self.download_btn = None
        if with_presets:
            with gr.Row():
                # allow_custom_value: choices come per model; the validator checks the value
                self.preset = gr.Dropdown([("None", NO_PRESET)], value=NO_PRESET, label="Few-step preset",
                                          allow_custom_value=True, elem_id=f"{prefix}-preset", scale=3)
                self.download_btn = gr.Button("Download its LoRA", visible=False, size="sm", scale=1,
                                              elem_id=f"{prefix}-preset-download")
            self.preset_note = gr.HTML("", elem_id=f"{prefix}-preset-note")
        for i in range(SLOTS):
            with gr.Group(visible=i == 0) as row:
                # "" (no LoRA), not None: an API client may then leave the slot out
                name = gr.Dropdown([], value="", label=f"LoRA {i + 1}", allow_custom_value=True,
                                   elem_id=f"{prefix}-lora{i}")
                with gr.Row():
                    high = gr.Slider(LO, HI, value=1.0, step=0.05, label="Strength",
                                     elem_id=f"{prefix}-lora{i}-strength")
                    low = gr.Slider(LO, HI, value=1.0, step=0.05, label="Low-noise strength",
                                    visible=False, elem_id=f"{prefix}-lora{i}-low")
            self.slots.append((row, name, high, low))
        self.note = gr.Markdown("", elem_id=f"{prefix}-lora-note")

    # ------------------------------------------------------------------------------------------ values
    def inputs(self) -> dict:
        out = {"preset": self.preset} if self.preset is not None else {}
        for i, (_, name, high, low) in enumerate(self.slots):
            out.update({f"lora{i}": name, f"lora{i}_strength": high, f"lora{i}_low": low})
        return out

    def field_inputs(self) -> dict:
        """Where the engine's UserError fields about LoRAs and presets are shown."""
        out = {"lora": "lora0", "loras": "lora0"}
        if self.preset is not None:
            out["preset"] = "preset"
        return out

    def entries(self, v: dict, spec) -> list[dict]:
        """The request's `loras` from the slots: [{"file", "strength", "strength_low"}]."""
        two = spec is not None and spec.experts == 2
        out = []
        for i in range(SLOTS):
            name = v.get(f"lora{i}")
            if not name:
                continue
            s = _strength(v.get(f"lora{i}_strength"), "lora strength")
            low = _strength(v.get(f"lora{i}_low"), "lora low-noise strength") if two else None
            out.append({"file": str(name), "strength": s, "strength_low": low})
        return out

    def apply(self, v: dict, req):
        """`req` with the slots' LoRAs and, when a preset is chosen, its LoRA files (UserError naming a
        missing file and where it goes). The preset's sampling values are already in the fields."""
        req = replace(req, loras=self.entries(v, common.spec_or_none(req.model)))
        preset_id = v.get("preset") if self.preset is not None else None
        if preset_id:
            p = lora_presets.get(str(preset_id), req.model)
            # the fields hold what runs: apply only adds the preset's files
            req = lora_presets.apply(p, req, self.ctx.engine.models_dirs)
        return req

    # ------------------------------------------------------------------------------------------ updates
    def outputs(self) -> list:
        out = [c for row, name, high, low in self.slots for c in (row, name, high, low)] + [self.note]
        if self.preset is not None:
            out += [self.preset, self.preset_note, self.download_btn]
        return out

    def for_model(self, spec, chosen: list[dict] | None = None, preset: str | None = None) -> dict:
        """Every picker control for `spec`, in one update: the LoRAs that fit it, one or two sliders,
        its presets. `chosen`: [{item, strength, strength_low}] to show (a loaded video's)."""
        items = fitting_items(self.ctx.engine.models_dirs, spec)
        choices = item_choices(items)
        names = {it.name for it in items}
        two = spec is not None and spec.experts == 2
        chosen = [c for c in (chosen or []) if c.get("item") in names][:SLOTS]
        out = {}
        for i, (row, name, high, low) in enumerate(self.slots):
            c = chosen[i] if i < len(chosen) else None
            s = c.get("strength", 1.0) if c else 1.0
            s_low = c.get("strength_low") if c else None
            out[row] = gr.update(visible=i == 0 or i <= len(chosen))
            out[name] = gr.update(choices=choices, value=c["item"] if c else "", interactive=bool(choices))
            out[high] = gr.update(value=s, label="High-noise strength" if two else "Strength")
            out[low] = gr.update(value=s if s_low is None else s_low, visible=two)
        if spec is None:
            out[self.note] = ""
        elif not items:
            folders = ", ".join(f"`{d}/loras`" for d in self.ctx.engine.models_dirs)
            out[self.note] = f"No LoRA for {spec.name} was found in {folders}."
        else:
            out[self.note] = (f"{len(items)} LoRA{'s fit' if len(items) != 1 else ' fits'} {spec.name}."
                              + (" Strength 0 for an expert means that expert does not load it." if two else ""))
        if self.preset is not None:
            ps = lora_presets.presets_for(spec.id) if spec is not None else []
            keep = preset if preset in {p.id for p in ps} else NO_PRESET
            out[self.preset] = gr.update(choices=[("None", NO_PRESET)] + [(p.name, p.id) for p in ps], value=keep,
                                         interactive=bool(ps))
            out.update(self._preset_status(spec, keep))
        return out

    def _preset_status(self, spec, preset_id: str | None, error_box=None) -> dict:
        """The note under the preset menu, its download button, and (when given) the error box."""
        out = {self.preset_note: "", self.download_btn: gr.update(visible=False)}
        if error_box is not None:
            out[error_box] = EMPTY
        if spec is None or not preset_id:
            if spec is not None and not lora_presets.presets_for(spec.id):
                out[self.preset_note] = f"<p class='wan-reasons'>{html.escape(spec.name)} has no few-step preset.</p>"
            return out
        try:
            p = lora_presets.get(preset_id, spec.id)
        except UserError as e:
            out[self.preset_note] = message_html("error", e.problem, e.fix)
            return out
        todo = p.missing(self.ctx.engine.models_dirs)
        settings = (f"{p.steps} steps, CFG {p.guidance:g}, shift {p.shift:g}, {p.solver} solver"
                    + (f", switch at step {p.switch_step}" if p.switch_step else ""))
        if not todo:
            out[self.preset_note] = message_html("ok", f"{p.name}: {settings}, with "
                                                 + ", ".join(f.name for f in p.installed(self.ctx.engine.models_dirs).values()))
            return out
        e = p.missing_error(todo, self.ctx.models_dir)
        out[self.preset_note] = message_html("info", f"{p.name}: {settings}.")
        if error_box is not None:
            out[error_box] = message_html("error", e.problem, e.fix)
        out[self.download_btn] = gr.update(visible=common.is_online())
        return out

    # ------------------------------------------------------------------------------------------ events
    def wire(self, model: gr.Dropdown, fields: dict, error_box) -> None:
        """`fields`: Request field name -> the tab's component, for what a preset sets; `error_box`: the
        box beside Generate (a missing preset file is said there)."""
        for i, (_, name, high, low) in enumerate(self.slots):
            nxt = self.slots[i + 1][0] if i + 1 < SLOTS else None
            outs = [high, low] + ([nxt] if nxt is not None else [])
            name.input(partial(self._picked, reveal_next=nxt is not None), [model, name], outs,
                       show_progress="hidden", api_visibility="private")
        if self.preset is None:
            return
        targets = [fields[k] for k in PRESET_FIELDS if k in fields]
        self.preset.input(partial(self._preset_picked, fields=fields, error_box=error_box), [model, self.preset],
                          [*targets, self.preset_note, self.download_btn, error_box], show_progress="hidden",
                          api_visibility="private")
        self.download_btn.click(self._download, [model, self.preset], [self.preset_note, self.download_btn],
                                concurrency_id=DOWNLOADS, concurrency_limit=1, api_visibility="private")

    def _picked(self, model_id, item_name, reveal_next: bool) -> list:
        """Strengths for the new choice (see default_strengths) and, once a slot is used, the next one."""
        spec = common.spec_or_none(model_id)
        item = next((it for it in fitting_items(self.ctx.engine.models_dirs, spec) if it.name == item_name), None)
        high, low = default_strengths(item) if spec is not None and spec.experts == 2 else (1.0, 1.0)
        out = [high, low]
        if reveal_next:
            out.append(gr.update(visible=True) if item_name else gr.skip())
        return out

    def _preset_picked(self, model_id, preset_id, fields: dict, error_box) -> dict:
        spec = common.spec_or_none(model_id)
        out = self._preset_status(spec, preset_id, error_box)
        if spec is None or not preset_id:
            return out
        try:
            p = lora_presets.get(preset_id, spec.id)
        except UserError:
            return out
        for k in PRESET_FIELDS:
            if k in fields and getattr(p, k) is not None:
                out[fields[k]] = getattr(p, k)
        return out

    def _download(self, model_id, preset_id, progress=gr.Progress()):
        spec = common.spec_or_none(model_id)
        try:
            p = lora_presets.get(str(preset_id or ""), spec.id if spec else "")
            written = lora_presets.download(p, self.ctx.models_dir,
                                            lambda n, i, k: progress(i / max(k, 1), desc=f"{p.name}: {n}"))
        except UserError as e:
            return message_html("error", e.problem, e.fix), gr.update()
        except Exception as e:  # noqa: BLE001 - a failed download is a message, not a dead page
            log.exception("preset download failed")
            return message_html("error", f"The download failed: {type(e).__name__}: {e}"), gr.update()
        return message_html("ok", f"{p.name}: {len(written)} file(s) downloaded."), gr.update(visible=False)

    # ------------------------------------------------------------------------------------------ metadata
    @staticmethod
    def recorded(meta: dict) -> list[dict]:
        """A video's LoRA choices ({item, strength, strength_low}) from its metadata."""
        try:
            return [{"item": c.file, "strength": c.strength, "strength_low": c.strength_low}
                    for c in lora.choices_from_metadata(meta.get("loras") or [])]
        except UserError:
            return []

    @staticmethod
    def from_values(v: dict) -> list[dict]:
        """The slots' choices ({item, strength, strength_low}) from a tab's saved values."""
        return [{"item": v[f"lora{i}"], "strength": v.get(f"lora{i}_strength", 1.0),
                 "strength_low": v.get(f"lora{i}_low")} for i in range(SLOTS) if v.get(f"lora{i}")]

    def restore_note(self, meta: dict, spec) -> str:
        """What of a video's LoRAs is not here (empty when every one was restored)."""
        have = {it.name for it in fitting_items(self.ctx.engine.models_dirs, spec)}
        gone = [c["item"] for c in self.recorded(meta) if c["item"] not in have]
        return (f" Not found here, so not restored: LoRA {', '.join(gone)}." if gone else "")


def _strength(value, field: str) -> float:
    if value in (None, ""):
        return 1.0
    return lora.check_strength(value, field)
