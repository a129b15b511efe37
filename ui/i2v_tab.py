"""The Image to Video tab: a first frame (and, for first-last-frame models, a last frame), a prompt, the
models that take an image, the size the official rule gives for the image (shown, overridable), and the
same live run as Text to Video: the shared RunView and generation controls (ui.generation_controls), a job
with its own cancel, the one GPU queue.

"Load settings from a video" restores everything but the image: a video keeps only the image's name,
SHA-256 and size, so the tab says which image to upload again.

Controls change each other only on user input (`.input`; the image's `.change` does nothing when the
image is cleared), so a loaded video's settings arrive in one update that no handler overwrites.
"""
from __future__ import annotations

import logging

import gradio as gr

from wan_app import catalog, i2v, outputs
from wan_app.errors import UserError
from wan_app.request import Request, parse_size

from . import common
from .generation_controls import FIELD_INPUTS as CLIP_FIELDS, INPUT_LABELS as CLIP_LABELS
from .generation_controls import ClipTab, Sampling, chosen_model, negative_prompt, run_row
from .lora_picker import LoraPicker
from .render import RunView, message_html

log = logging.getLogger(__name__)

PREFIX = "wan-i2v"
OUTPUTS_LIMIT = 50
FIELD_INPUTS = {**CLIP_FIELDS, "image": "image", "last_image": "last_image"}
INPUT_LABELS = {**CLIP_LABELS, "image": "First frame", "last_image": "Last frame"}


def image_model_status(engine, refresh: bool = False):
    """(statuses of the models that take an image: the non-tiny ones and the tiny ones present, a note
    about skipped files or None), the models made for this tab first; TI2V 5B, which also makes videos
    from text alone, after them."""
    statuses, note = common.model_status(engine, refresh, wanted=lambda spec: spec.image_input != "none")
    return sorted(statuses, key=lambda s: not s.spec.image_required), note


def image_size(path) -> tuple[int, int] | None:
    """(width, height) of an uploaded image, or None when it is not a usable one (the check says why)."""
    if not path:
        return None
    try:
        return i2v.check_image(path, "image")
    except UserError:
        return None


class I2VTab(ClipTab):
    """Builds the tab inside an open gr.Blocks."""

    KIND = "i2v"
    NOT_REMEMBERED = ("image", "last_image")      # a browser's memory keeps no pictures
    FIELDS, LABELS = FIELD_INPUTS, INPUT_LABELS

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
                self.generate_btn, self.stop_btn, error = run_row(PREFIX)
                with gr.Row():
                    self.size = gr.Dropdown([], value=None, label="Size (width x height)", allow_custom_value=True,
                                            elem_id=f"{PREFIX}-size")
                    self.frames = gr.Slider(1, 81, value=81, step=4, label="Frames (4n+1)", elem_id=f"{PREFIX}-frames")
                self.size_note = gr.Markdown("", elem_id=f"{PREFIX}-size-note", elem_classes=["wan-reasons"])
                self.frames_note = gr.Markdown("", elem_classes=["wan-reasons"])
                self.missing = gr.Markdown("", visible=False, elem_id=f"{PREFIX}-missing")
                self.negative = negative_prompt(PREFIX)
                self.sampling = Sampling(PREFIX, steps=40, boundary=0.9, open=False)
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
        v = self.common_inputs()
        # the API takes the images right after the model
        return {"model": v.pop("model"), "image": self.image, "last_image": self.last_image, **v}

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
        return {self.size: gr.update(choices=choices, value=chosen), self.size_note: note,
                **self.frames_values(spec, w, h, frames or r.get("frames"), overrides)}

    def model_values(self, spec, r: dict | None = None, overrides=None, loras: list | None = None,
                     preset: str | None = None, image=None) -> dict:
        """Every control that depends on the model, from `r` (a request's fields) or the official
        defaults, and `loras` ([{item, strength, strength_low}]) in the picker: one update, so nothing
        has to follow it."""
        return {**self.size_values(spec, image, r, overrides),
                self.last_image: gr.update(visible=spec.image_input == "image+last"),
                **self.sampling_values(spec, r, loras, preset)}

    def model_outputs(self) -> list:
        return list(dict.fromkeys([self.size, self.size_note, self.frames, self.frames_note, self.last_image,
                                   *self.sampling_outputs()]))

    def build_request(self, v: dict, *, need_image: bool = True) -> Request:
        spec = chosen_model(v, "install an image-to-video model first")
        if spec.image_input == "none":
            raise UserError("model", f"{spec.name} makes videos from text",
                            "use the Text to Video tab, or choose a model that takes an image")
        if need_image and not v.get("image"):
            raise UserError("image", "no image was given", "upload the frame the video starts from")
        w, h = parse_size(v["size"]) if v.get("size") else (None, None)
        req = Request(model=spec.id, width=w, height=h, **self.clip_fields(v, spec),
                      image=str(v["image"]) if v.get("image") else None,
                      last_image=str(v["last_image"]) if v.get("last_image") and spec.image_input == "image+last"
                      else None)
        return self.loras.apply(v, req)

    def note_request(self, v: dict) -> Request:
        """The request without its images: what the cache skips and a remembered request need no picture."""
        return self.build_request({**v, "image": None, "last_image": None}, need_image=False)

    # ------------------------------------------------------------------------------------------ events
    def wire(self) -> None:
        page = self.page
        self.wire_common([*self.view.components, self.seed_used, self.info, self.videos], "image_to_video",
                         ready=lambda: bool(self.ready_ids()))
        self.model.input(self.on_model, [self.model, self.image, page.overrides], self.model_outputs(),
                         show_progress="hidden", api_visibility="private")
        self.image.change(self.on_image, [self.model, self.image, self.frames, page.overrides],
                          [self.size, self.size_note, self.frames, self.frames_note],
                          show_progress="hidden", api_visibility="private")
        self.size.input(self.on_size, [self.model, self.size, self.frames, page.overrides],
                        [self.frames, self.frames_note], show_progress="hidden", api_visibility="private")
        self.videos_refresh.click(self.refresh_videos, None, [self.videos], show_progress="hidden",
                                  api_visibility="private")
        self.load_btn.click(self.load_from_video, [self.videos, self.image, page.overrides], self.restore_outputs(),
                            api_name="load_i2v_settings")

    def restore_outputs(self) -> list:
        outs = super().restore_outputs()
        # the message last, as on every tab
        return list(dict.fromkeys([*outs[:-1], self.image, self.last_image, outs[-1]]))

    def on_model(self, model_id, image, overrides):
        spec = common.spec_or_none(model_id)
        if spec is None:
            return {}
        return self.model_values(spec, None, common.overrides_of(overrides), image=image)

    def on_image(self, model_id, image, frames, overrides):
        spec = common.spec_or_none(model_id)
        if spec is None or not image:
            return {}       # cleared (by the user or by loading a video's settings): nothing follows
        return self.size_values(spec, image, None, common.overrides_of(overrides), frames)

    def finished(self, ev) -> dict:
        return {**super().finished(ev), self.videos: gr.update(choices=self.video_choices())}

    # ------------------------------------------------------------------------------------------ videos
    def video_choices(self) -> list[tuple[str, str]]:
        """The app's own finished videos made from an image, newest first."""
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
        video, meta, r, spec = self.video_settings(path, "Choose one of your videos first.")
        if video is None:
            return meta
        if spec.image_input == "none":
            return {self.load_msg: message_html("error", f"{video.name} was made from text with {spec.name}: "
                                                "load it on the Text to Video tab.")}
        out = self.model_values(spec, r, common.overrides_of(overrides), LoraPicker.recorded(meta))
        restored, note = self.restored(video, meta, r, spec)
        out.update(restored)
        out.update({self.image: None, self.last_image: None})
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
            out.update(self.model_values(catalog.get(value), None, common.overrides_of(overrides), image=image))
        return out

    def on_load(self, last: dict, overrides: dict | None = None) -> dict:
        """The tab as it is for this visit: the image models ready now, this browser's last request."""
        prev = (last or {}).get(self.KIND) or {}
        ids = self.ready_ids()
        model = prev.get("model") if prev.get("model") in ids else (ids[0] if ids else None)
        out = self.sync_models(model, None, None, overrides)      # the model's controls follow here
        if model:
            out.update(self.last_visit(last, model, overrides))
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
