"""What models are ready, what each one still needs, and the two ways to get some: download from the
Hugging Face Hub (with Gradio's progress bar following the hub's own tqdm bars) and the tiny demo models.

Shown twice: as the first-run box on Text to Video (only while no model is ready) and as the Models
section of Settings. Both run on their own queue, never the GPU's, so a download does not wait for a
video and a video does not wait for a download.
"""
from __future__ import annotations

import logging

import gradio as gr

from wan_app.errors import UserError

from . import common
from .common import DOWNLOADS, AppContext
from .render import message_html

log = logging.getLogger(__name__)

TINY_NOTE = ("random weights, about 90 MB on disk; they make noise videos in seconds, so you can try "
             "every part of the app")


class ModelsPanel:
    def __init__(self, ctx: AppContext, first_run: bool):
        self.ctx, self.first_run = ctx, first_run
        self.online = common.is_online()
        with gr.Column(visible=not first_run, variant="panel") as self.box:
            if first_run:
                gr.Markdown("### No model is ready yet\nEach model needs its weights in the models folder. "
                            f"To see the whole app work right now, install the tiny demo models ({TINY_NOTE}).")
            else:
                gr.Markdown("### Models\nDownload a model's missing files, or install the tiny demo models "
                            f"({TINY_NOTE}).")
            with gr.Row():
                self.install_btn = gr.Button("Install tiny demo models", variant="primary" if first_run
                                             else "secondary", scale=1,
                                             elem_id="wan-install-tiny" if first_run else None)
                with gr.Column(scale=2):
                    self.download_model = gr.Dropdown([], label="Download a model from Hugging Face", allow_custom_value=True,
                                                      visible=self.online)
                    self.download_btn = gr.Button("Download the missing files", visible=self.online)
            if not self.online:
                gr.Markdown("You are offline, so nothing can be downloaded here: put each file named below in "
                            "the folder shown, then press Rescan.")
            self.status = gr.HTML("")
        self.missing = gr.Markdown("", visible=False, elem_id="wan-missing" if first_run else None)
        self.acc = self.missing_more = None

    def build_more(self) -> None:
        """The first-run panel's list of other models, once models are ready (placed at the tab's end)."""
        with gr.Accordion("Other models and what they still need", open=False, visible=False) as self.acc:
            self.missing_more = gr.Markdown("")

    def outputs(self) -> list:
        return [c for c in (self.box, self.missing, self.acc, self.missing_more, self.download_model)
                if c is not None]

    def updates(self, statuses, note: str | None) -> dict:
        ready = any(s.runnable for s in statuses)
        md = common.missing_markdown(statuses, self.ctx.engine.models_dirs) + (f"\n\n{note}" if note else "")
        out = {self.download_model: gr.update(choices=[(s.spec.name, s.spec.id) for s in statuses
                                                       if not s.runnable and not s.spec.tiny])}
        if self.first_run and self.acc is not None:
            out.update({self.box: gr.update(visible=not ready), self.missing: gr.update(value=md, visible=not ready),
                        self.acc: gr.update(visible=ready), self.missing_more: md})
        else:
            out[self.missing] = gr.update(value=md, visible=bool(md.strip()))
        return out

    def wire(self, after) -> list:
        """`after` = (fn, inputs, outputs) run once files were written (the model list's refresh).
        Returns those follow-up events, for others to chain on."""
        fn, inputs, outputs = after
        ev = self.install_btn.click(self.install_tiny, None, [self.status], concurrency_id=DOWNLOADS,
                                    concurrency_limit=1, api_name="install_tiny" if self.first_run else None,
                                    api_visibility="public" if self.first_run else "private")
        first = ev.then(fn, inputs, outputs, show_progress="hidden", api_visibility="private")
        ev = self.download_btn.click(self.download, [self.download_model], [self.status],
                                     concurrency_id=DOWNLOADS, concurrency_limit=1,
                                     api_name="download" if self.first_run else None,
                                     api_visibility="public" if self.first_run else "private")
        return [first, ev.then(fn, inputs, outputs, show_progress="hidden", api_visibility="private")]

    # ---- actions --------------------------------------------------------------------------------
    def install_tiny(self, progress=gr.Progress()):
        target = self.ctx.models_dir / "tiny-demo"
        progress(0, desc=f"Writing the tiny demo models into {target}")
        try:
            from wan_app import tiny
            tiny.build_all(target, i2v=True)
        except Exception as e:  # noqa: BLE001
            log.exception("writing tiny models failed")
            return message_html("error", f"Could not write the tiny models: {e}",
                                "check that the models folder is writable")
        return message_html("ok", f"Tiny demo models written to {target}. Pick one and press Generate.")

    def download(self, model_id, progress=gr.Progress(track_tqdm=True)):
        spec = common.spec_or_none(model_id)
        if spec is None:
            return message_html("error", "Choose a model to download.")
        from wan_app.checkpoints import download_missing
        try:
            paths = download_missing(spec, self.ctx.models_dir,
                                     lambda name, i, n: progress(i / max(n, 1), desc=f"{spec.name}: {name}"))
        except UserError as e:
            return message_html("error", e.problem, e.fix)
        except Exception as e:  # noqa: BLE001
            log.exception("download failed")
            return message_html("error", f"The download failed: {type(e).__name__}: {e}")
        return message_html("ok", f"{spec.name}: {len(paths)} file(s) downloaded.")
