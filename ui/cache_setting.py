"""The step cache setting of a generation tab (wan_app.stepcache): off, MagCache or TeaCache, and its
threshold. Only the kinds with a published table for the chosen model are offered; what the cache will
skip is the plan's own sentence (`Plan.step_cache`), shown under the setting."""
from __future__ import annotations

import logging

import gradio as gr

from wan_app import stepcache
from wan_app.errors import UserError

from . import common

log = logging.getLogger(__name__)

LABELS = {"off": "Off", "magcache": "MagCache", "teacache": "TeaCache"}


def kinds_for(spec) -> list[str]:
    """The cache kinds the engine accepts for this model (its own check, so the two cannot differ)."""
    out = []
    for kind in stepcache.KINDS:
        try:
            stepcache.check(kind, spec)
        except UserError:
            continue
        out.append(kind)
    return out


class CacheSetting:
    """Build inside an open layout block; `prefix` makes the element ids."""

    def __init__(self, prefix: str):
        with gr.Row():
            # allow_custom_value: choices follow the model; the engine's check refuses what does not fit
            self.kind = gr.Dropdown([(LABELS[k], k) for k in stepcache.KINDS], value="off", label="Step cache",
                                    allow_custom_value=True, elem_id=f"{prefix}-cache")
            # Text, not gr.Number: empty means "the published value", and a Number cannot be empty
            # without becoming a required argument of the tab's API endpoint
            self.threshold = gr.Textbox("", label=f"Cache threshold, 0 to {stepcache.THRESHOLD_MAX:g} "
                                        "(empty: the published value)", max_lines=1,
                                        elem_id=f"{prefix}-cache-threshold")
        self.note = gr.Markdown("Off: every step runs the whole model.", elem_id=f"{prefix}-cache-note",
                                elem_classes=["wan-reasons"])

    def inputs(self) -> dict:
        return {"cache": self.kind, "cache_threshold": self.threshold}

    @staticmethod
    def field_inputs() -> dict:
        return {"cache": "cache", "cache_threshold": "cache_threshold"}

    @staticmethod
    def fields(v: dict) -> dict:
        """The Request fields from the values; the range is the engine's check (stepcache.check)."""
        t = v.get("cache_threshold")
        if isinstance(t, str):
            t = t.strip()
            try:
                t = float(t) if t else None
            except ValueError:
                raise UserError("cache_threshold", f"'{t}' is not a number",
                                f"write a number from 0 to {stepcache.THRESHOLD_MAX:g}, or leave it empty for "
                                "the published value") from None
        return {"cache": v.get("cache") or "off", "cache_threshold": t}

    def outputs(self) -> list:
        return [self.kind, self.threshold, self.note]

    def for_model(self, spec, r: dict | None = None) -> dict:
        """The kinds this model has tables for; `r` (a request's fields) keeps a loaded video's choice."""
        kinds = kinds_for(spec) if spec is not None else ["off"]
        r = r or {}
        kind = r.get("cache") if r.get("cache") in kinds else "off"
        missing = [LABELS[k] for k in stepcache.KINDS if k not in kinds]
        note = "Off: every step runs the whole model."
        if spec is not None and missing:
            note += f" {' and '.join(missing)}: no published table for {spec.name}."
        return {self.kind: gr.update(choices=[(LABELS[k], k) for k in kinds], value=kind),
                self.threshold: "" if r.get("cache_threshold") is None else f"{r['cache_threshold']:g}",
                self.note: note}

    def wire(self, describe, inputs: list, extra_triggers: list = ()) -> None:
        """`describe(*inputs) -> str` says what the cache will do for the tab's current values."""
        for trigger in (self.kind.input, self.threshold.input, *extra_triggers):
            trigger(describe, inputs, [self.note], show_progress="hidden", api_visibility="private")


def plan_note(engine, req, overrides) -> str:
    """The plan's sentence about the cache for `req`, or why there is none."""
    if (req.cache or "off") == "off":
        return "Off: every step runs the whole model."
    from . import engine_api
    try:
        p = engine_api.plan(engine, req, common.overrides_of(overrides))
    except UserError as e:
        return f"{e.field}: {e.problem}" + (f" — {e.fix}" if e.fix else "")
    except Exception as e:  # noqa: BLE001 - a note must not take the page down
        log.exception("planning the step cache failed")
        return f"Could not plan the cache: {type(e).__name__}: {e}"
    return p.step_cache if p.step_cache != "off" else "Off: every step runs the whole model."
