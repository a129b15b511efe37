"""The Text to Video tab: controls, the live run, the past outputs (they play when clicked) and "load
settings from this video". Also the first-run panel (what is missing, the tiny demo models), since a new
user lands here first. The controls it shares with the other generation tabs come from
ui.generation_controls.

Controls change each other only on user input (`.input`), never on a programmatic update, so a loaded
video's settings or a rescan arrive in one update that no handler overwrites afterwards.
"""
from __future__ import annotations

import logging

import gradio as gr

from wan_app import catalog, outputs
from wan_app.request import Request, parse_size

from . import common
from .generation_controls import ClipTab, Sampling, chosen_model, metadata_text, negative_prompt, run_row
from .lora_picker import LoraPicker
from .models_panel import ModelsPanel
from .render import RunView, message_html

log = logging.getLogger(__name__)

GALLERY_LIMIT = 24


class T2VTab(ClipTab):
    """Builds the tab inside an open gr.Blocks."""

    KIND = "clip"

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
                self.generate_btn, self.stop_btn, error = run_row("wan")      # errors right under Generate
                with gr.Row():
                    self.size = gr.Dropdown([], value=None, label="Size (width x height)", elem_id="wan-size",
                                            allow_custom_value=True)
                    self.frames = gr.Slider(1, 81, value=81, step=4, label="Frames (4n+1)", elem_id="wan-frames")
                self.frames_note = gr.Markdown("", elem_classes=["wan-reasons"])
                self.negative = negative_prompt("wan")
                self.sampling = Sampling("wan", steps=50, boundary=0.875, open=True)
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
        return self.common_inputs()

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
        return {self.size: gr.update(choices=sizes, value=size),
                **self.frames_values(spec, w, h, r.get("frames"), overrides, loaded=True),
                **self.sampling_values(spec, r, loras, preset)}

    def model_outputs(self) -> list:
        return [self.size, self.frames, self.frames_note, *self.sampling_outputs()]

    def build_request(self, v: dict) -> Request:
        spec = chosen_model(v, "install a model or the tiny demo models first")
        w, h = parse_size(v["size"]) if v.get("size") else spec.default_size
        req = Request(model=spec.id, width=w, height=h, **self.clip_fields(v, spec))
        return self.loras.apply(v, req)

    note_request = build_request

    # ------------------------------------------------------------------------------------------ events
    def wire(self) -> None:
        page = self.page
        self.wire_common([*self.view.components, self.seed_used, self.info, self.gallery, self.gallery_paths],
                         "generate", ready=lambda: bool(self.ready_ids()))
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
        # events after which the model list may have changed (the other tabs follow them)
        self.model_list_events = [rescanned, *self.models.wire(
            after=(self.rescan, [self.model, page.overrides], self.rescan_outputs()))]
        self.refresh_btn.click(self.refresh_gallery, None, [self.gallery, self.gallery_paths],
                               api_name="outputs")
        self.gallery.select(self.on_select, [self.gallery_paths],
                            [self.selected, self.picked, self.load_msg], api_visibility="private")
        self.choice_events.append(self.load_btn.click(
            self.load_from_video, [self.selected, page.overrides], self.restore_outputs(), api_name="load_settings"))
        self.choice_events += self.model_list_events

    def on_model(self, model_id, overrides):
        spec = common.spec_or_none(model_id)
        if spec is None:
            return {}
        return self.model_values(spec, None, common.overrides_of(overrides))

    def finished(self, ev) -> dict:
        items = self.gallery_items()
        return {**super().finished(ev), self.gallery: items, self.gallery_paths: [p for p, _ in items]}

    # ------------------------------------------------------------------------------------------ gallery
    def gallery_items(self) -> list[tuple[str, str]]:
        """The app's own videos only: regular files in the dated folders (no symlinks), finished, newest
        first."""
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
        video, meta, r, spec = self.video_settings(path, "Choose one of your outputs first.")
        if video is None:
            return meta
        if meta.get("image") or spec.image_required:
            return {self.load_msg: message_html("error", f"{video.name} was made from an image: load its settings "
                                                "on the Image to Video tab.")}
        out = self.model_values(spec, r, common.overrides_of(overrides), LoraPicker.recorded(meta))
        restored, note = self.restored(video, meta, r, spec)
        out.update(restored)
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
        prev = (last or {}).get(self.KIND) or {}
        saved = self.ctx.saved_settings()
        default = next((m for m in (prev.get("model"), saved.default_model) if m in ids), ids[0] if ids else None)
        out = self.rescan(default, overrides, None, refresh=False)
        out[self.model] = gr.update(choices=common.runnable_choices(statuses), value=default)
        if default:
            out.update(self.last_visit(last, default, overrides))
        items = self.gallery_items()
        out.update({self.gallery: items, self.gallery_paths: [p for p, _ in items]})
        return out

    def load_outputs(self) -> list:
        return list(dict.fromkeys([*self.rescan_outputs(), self.prompt, self.negative, self.solver,
                                   self.seed_mode, self.seed, self.gallery, self.gallery_paths]))


__all__ = ["T2VTab", "metadata_text"]
