"""The Text to Video tab: controls, the live run (progress, preview, A14B expert badge), the result, the
gallery of past outputs and "load settings from this video". Also the first-run panel (what is missing,
download, tiny demo models), since a new user lands here first."""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import gradio as gr

from wan_app import catalog, events, outputs
from wan_app.catalog import DEFAULT_NEGATIVE_PROMPT, SOLVERS
from wan_app.errors import UserError
from wan_app.media import read_metadata
from wan_app.request import MAX_SEED, Request, parse_size

from . import common
from .common import GPU, AppContext

log = logging.getLogger(__name__)

GALLERY_LIMIT = 24


class T2VTab:
    """Builds the tab inside an open gr.Blocks; the server wires cross-tab refreshes through the attributes."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self.build()

    # ------------------------------------------------------------------------------------------ layout
    def build(self) -> None:
        ctx = self.ctx
        statuses, scan_error = common.model_status(ctx.engine, refresh=True)
        choices = common.runnable_choices(statuses)
        ids = [c[1] for c in choices]
        last = ctx.settings.last_request or {}
        default = next((m for m in (last.get("model"), ctx.settings.default_model) if m in ids),
                       ids[0] if ids else None)
        spec = common.spec_or_none(default)
        self.online = common.is_online()

        with gr.Group(visible=not ids) as self.setup_box:
            gr.Markdown("### No model is ready yet\nEach model needs its weights in the models folder. "
                        "To see the whole app work right now, install the tiny demo models "
                        "(random weights, a few MB, they make noise videos in seconds).")
            with gr.Row():
                self.install_tiny_btn = gr.Button("Install tiny demo models", variant="primary", scale=1)
                with gr.Column(scale=2):
                    self.download_model = gr.Dropdown(
                        [(s.spec.name, s.spec.id) for s in statuses if not s.runnable and not s.spec.tiny],
                        label="Download a model from Hugging Face", visible=self.online)
                    self.download_btn = gr.Button("Download the missing files", visible=self.online)
            gr.Markdown("You are offline, so nothing can be downloaded here: put each file named below in the "
                        "folder shown, then press Rescan." if not self.online else "", visible=not self.online)
            self.setup_status = gr.HTML("")
        self.missing = gr.Markdown(common.missing_markdown(statuses, ctx.engine.models_dirs)
                                   + (f"\n\n{scan_error}" if scan_error else ""),
                                   visible=not ids, elem_id="wan-missing")

        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=360):
                with gr.Row():
                    self.model = gr.Dropdown(choices, value=default, label="Model", scale=4,
                                             info=None if ids else "no model is ready: see above")
                    self.rescan_btn = gr.Button("Rescan", scale=0, size="sm", min_width=90)
                with gr.Accordion("Other models and what they still need", open=False,
                                  visible=bool(ids)) as self.missing_acc:
                    self.missing_more = gr.Markdown(common.missing_markdown(statuses, ctx.engine.models_dirs))
                self.prompt = gr.Textbox(label="Prompt", lines=3, value=last.get("prompt", ""),
                                         placeholder="A red fox runs through fresh snow at dawn, cinematic",
                                         elem_id="wan-prompt")
                # Folded: the official default is Chinese, unreadable for most users, and rarely edited.
                with gr.Accordion("Negative prompt (the official default is prefilled)", open=False):
                    self.negative = gr.Textbox(label="Negative prompt", lines=3, show_label=False,
                                               value=last.get("negative_prompt") or DEFAULT_NEGATIVE_PROMPT)
                sizes = common.size_choices(spec) if spec else []
                size0 = sizes[0] if sizes else None
                limit, why = (common.frames_limit(ctx.engine, spec, *parse_size(size0)) if spec else (81, ""))
                with gr.Row():
                    self.size = gr.Dropdown(sizes, value=size0, label="Size (width x height)")
                    self.frames = gr.Slider(1, max(limit, 1), value=common.snap_frames(spec.frames, limit)
                                            if spec else 81, step=4, label="Frames (4n+1)")
                self.frames_note = gr.Markdown(why, elem_classes=["wan-reasons"])
                a14b = bool(spec and spec.experts == 2)
                with gr.Accordion("Sampling", open=True):
                    with gr.Row():
                        self.steps = gr.Slider(1, 100, value=spec.steps if spec else 50, step=1, label="Steps")
                        self.shift = gr.Number(value=spec.shift if spec else 5.0, label="Shift", minimum=0.1,
                                               maximum=100)
                        self.solver = gr.Dropdown(list(SOLVERS), value="unipc", label="Solver")
                    with gr.Row():
                        self.cfg = gr.Number(value=spec.guidance if spec else 5.0, minimum=0, maximum=30,
                                             label="CFG (high-noise expert)" if a14b else "CFG")
                        self.cfg2 = gr.Number(value=(spec.guidance_2 if a14b else 3.0), minimum=0, maximum=30,
                                              label="CFG (low-noise expert)", visible=a14b)
                        self.boundary = gr.Number(value=(spec.boundary if a14b else 0.875), minimum=0.01,
                                                  maximum=0.99, step=0.005, label="Expert switch boundary",
                                                  visible=a14b)
                    with gr.Row():
                        self.seed_mode = gr.Radio(["random", "fixed"], value="random", label="Seed")
                        self.seed = gr.Number(value=42, precision=0, minimum=0, maximum=MAX_SEED,
                                              label="Seed value (when fixed)")
                with gr.Row():
                    self.generate_btn = gr.Button("Generate", variant="primary", elem_id="wan-generate",
                                                  interactive=bool(ids))
                    self.stop_btn = gr.Button("Stop", variant="stop", elem_id="wan-stop")
            with gr.Column(scale=6, min_width=360):
                self.status = gr.HTML(common.progress_html("idle"), elem_id="wan-status")
                self.badge = gr.HTML(common.expert_badge_html(None), elem_id="wan-badge")
                self.preview = gr.Image(label="Live preview (what the model predicts at this step)",
                                        interactive=False, height=260, elem_id="wan-preview", format="png")
                self.video = gr.Video(label="Result", interactive=False, elem_id="wan-video", height=320,
                                      autoplay=True, loop=True)
                self.seed_used = gr.Textbox(label="Seed used", interactive=False, elem_id="wan-seed-used")
                with gr.Accordion("Settings of this video", open=False):
                    # Text, not gr.JSON: the metadata names model files by path, and Gradio clients take any
                    # {"path": ...} in a JSON value for a file to download.
                    self.info = gr.Code(label="Metadata", language="json", interactive=False, lines=12)

        gr.Markdown("### Past outputs")
        items = self.gallery_items()
        self.gallery_paths = gr.State([p for p, _ in items])
        self.gallery = gr.Gallery(items, label="Outputs (newest first)", columns=6, height=230,
                                  fit_columns=False, object_fit="contain", allow_preview=False,
                                  elem_id="wan-gallery")
        with gr.Row():
            self.selected = gr.Textbox(label="Selected video", interactive=False, scale=4)
            self.refresh_btn = gr.Button("Refresh", scale=1, size="sm")
            self.load_btn = gr.Button("Load settings from this video", scale=2)
        self.load_msg = gr.HTML("")
        self.wire()

    # ------------------------------------------------------------------------------------------ events
    def controls(self) -> list:
        return [self.model, self.prompt, self.negative, self.size, self.frames, self.steps, self.shift,
                self.cfg, self.cfg2, self.boundary, self.solver, self.seed_mode, self.seed]

    def wire(self) -> None:
        run_outputs = [self.status, self.badge, self.preview, self.video, self.seed_used, self.info,
                       self.gallery, self.gallery_paths]
        self.model.change(self.on_model, [self.model], [self.size, self.frames, self.frames_note, self.steps,
                                                        self.shift, self.cfg, self.cfg2, self.boundary,
                                                        self.badge], api_visibility="private")
        self.size.change(self.on_size, [self.model, self.size, self.frames], [self.frames, self.frames_note],
                         api_visibility="private")
        self.generate_btn.click(self.arm, None, None, concurrency_limit=None, api_visibility="private",
                                queue=False).then(
            self.generate, self.controls(), run_outputs, concurrency_id=GPU, concurrency_limit=1,
            api_name="generate")
        self.stop_btn.click(self.stop, None, [self.status], concurrency_limit=None, queue=False,
                            api_name="stop")
        refresh_outs = [self.model, self.missing, self.missing_more, self.missing_acc, self.setup_box,
                        self.generate_btn, self.download_model]
        self.rescan_btn.click(self.rescan, None, refresh_outs, api_name="rescan")
        self.install_tiny_btn.click(self.install_tiny, None, [self.setup_status] + refresh_outs,
                                    concurrency_id=GPU, concurrency_limit=1, api_name="install_tiny")
        self.download_btn.click(self.download, [self.download_model], [self.setup_status] + refresh_outs,
                                concurrency_id=GPU, concurrency_limit=1, api_name="download")
        self.refresh_btn.click(self.refresh_gallery, None, [self.gallery, self.gallery_paths],
                               api_visibility="private")
        self.gallery.select(self.on_select, [self.gallery_paths], [self.selected], api_visibility="private")
        self.load_btn.click(self.load_from_video, [self.selected], self.controls() + [self.load_msg],
                            api_name="load_settings")

    def on_model(self, model_id):
        spec = common.spec_or_none(model_id)
        if spec is None:
            return (gr.skip(),) * 9
        sizes = common.size_choices(spec)
        limit, why = common.frames_limit(self.ctx.engine, spec, *spec.default_size)
        a14b = spec.experts == 2
        return (gr.update(choices=sizes, value=sizes[0]),
                gr.update(maximum=max(limit, 1), value=common.snap_frames(spec.frames, limit)), why,
                spec.steps, spec.shift,
                gr.update(value=spec.guidance, label="CFG (high-noise expert)" if a14b else "CFG"),
                gr.update(value=spec.guidance_2 if a14b else 3.0, visible=a14b),
                gr.update(value=spec.boundary if a14b else 0.875, visible=a14b),
                common.expert_badge_html(None))

    def on_size(self, model_id, size, frames):
        spec = common.spec_or_none(model_id)
        if spec is None or not size:
            return gr.skip(), gr.skip()
        limit, why = common.frames_limit(self.ctx.engine, spec, *parse_size(size))
        return gr.update(maximum=max(limit, 1), value=common.snap_frames(frames or spec.frames, limit)), why

    def arm(self, request: gr.Request):
        self.ctx.stops.arm(common.session_of(request))

    def stop(self, request: gr.Request):
        if self.ctx.stops.stop(common.session_of(request)):
            return common.progress_html("stopped", message="stopping after the current step…")
        return gr.skip()

    # ------------------------------------------------------------------------------------------ the run
    def build_request(self, model, prompt, negative, size, frames, steps, shift, cfg, cfg2, boundary, solver,
                      seed_mode, seed) -> Request:
        spec = catalog.get(model) if model else None
        if spec is None:
            raise UserError("model", "no model is chosen", "install a model or the tiny demo models first")
        w, h = parse_size(size) if size else spec.default_size
        a14b = spec.experts == 2
        return Request(
            model=model, prompt=prompt or "", negative_prompt=negative if negative is not None else None,
            width=w, height=h, frames=int(frames) if frames else None, steps=int(steps) if steps else None,
            shift=float(shift) if shift else None, guidance=None if cfg is None else float(cfg),
            guidance_2=(None if cfg2 is None else float(cfg2)) if a14b else None,
            boundary=(None if boundary is None else float(boundary)) if a14b else None,
            solver=solver or "unipc",
            seed=None if seed_mode != "fixed" or seed is None else int(seed))

    def generate(self, model, prompt, negative, size, frames, steps, shift, cfg, cfg2, boundary, solver,
                 seed_mode, seed, request: gr.Request):
        """Streams (status, badge, preview, video, seed used, metadata, gallery, gallery paths)."""
        skip = gr.skip()
        cancel = self.ctx.stops.take(common.session_of(request))
        try:
            try:
                req = self.build_request(model, prompt, negative, size, frames, steps, shift, cfg, cfg2,
                                         boundary, solver, seed_mode, seed)
            except UserError as e:
                yield (common.message_html("error", f"{e.field}: {e.problem}", e.fix),) + (skip,) * 7
                return
            if cancel.is_set():
                yield (common.progress_html("stopped", message="stopped before it started"),) + (skip,) * 7
                return
            self.remember(req)
            spec = catalog.get(req.model)
            expert = "high" if spec.experts == 2 else None
            switched = switch_s = None
            yield (common.progress_html("load", message="preparing"), common.expert_badge_html(expert),
                   None, None, "", "", skip, skip)
            for ev in common.stream_in_thread(lambda: self.ctx.engine.run(req, cancel), cancel):
                if isinstance(ev, events.Progress):
                    yield (common.progress_html(ev.phase, ev.step, ev.total, ev.eta_s, ev.message),) + (skip,) * 7
                elif isinstance(ev, events.Preview):
                    if ev.expert:
                        expert = ev.expert
                    yield (common.progress_html("sample", ev.step, ev.total),
                           common.expert_badge_html(expert, switched, switch_s),
                           common.preview_image(ev.frames)) + (skip,) * 5
                elif isinstance(ev, events.ExpertSwitch):
                    expert, switched, switch_s = ev.to_expert, ev.step, ev.seconds
                    yield (skip, common.expert_badge_html(expert, switched, switch_s)) + (skip,) * 6
                elif isinstance(ev, events.Notice):
                    gr.Info(ev.message)
                elif isinstance(ev, events.Finished):
                    items = self.gallery_items()
                    used = ev.metadata.get("request", {}).get("seed")
                    yield (common.progress_html("done", message=f"{ev.seconds:.1f}s"), skip, skip,
                           str(ev.path), "" if used is None else str(used), metadata_text(ev.metadata),
                           items, [p for p, _ in items])
                elif isinstance(ev, events.Cancelled):
                    yield (common.progress_html("stopped", message=ev.message),) + (skip,) * 7
                elif isinstance(ev, events.Failed):
                    yield (common.message_html("error", ev.message, ev.hint),) + (skip,) * 7
        finally:
            common.Stops.finish(cancel)

    def remember(self, req: Request) -> None:
        """The last request is part of the settings, so a restart opens where the user left off."""
        ctx = self.ctx
        ctx.settings.last_request = {k: v for k, v in req.to_dict().items() if v is not None}
        if ctx.settings_path is not None:
            from wan_app.settings import save_settings
            try:
                save_settings(ctx.settings, ctx.settings_path)
            except (UserError, OSError) as e:
                log.warning("could not save the last request: %s", e)

    # ------------------------------------------------------------------------------------------ gallery
    def gallery_items(self) -> list[tuple[str, str]]:
        items = []
        for it in outputs.list_outputs(self.ctx.outputs_dir, limit=GALLERY_LIMIT):
            prompt = ((it.metadata or {}).get("request") or {}).get("prompt") or it.path.name
            items.append((str(it.path), prompt[:60]))
        return items

    def refresh_gallery(self):
        items = self.gallery_items()
        return items, [p for p, _ in items]

    def on_select(self, paths, evt: gr.SelectData):
        try:
            return paths[evt.index]
        except (IndexError, TypeError):
            return ""

    def load_from_video(self, path):
        """Every control back as it was for that video (only videos inside the outputs folder)."""
        n = len(self.controls())
        if not path or not outputs.is_inside(path, self.ctx.outputs_dir) or not Path(path).is_file():
            return (gr.skip(),) * n + (common.message_html("error", "Choose one of your outputs first."),)
        meta = read_metadata(path) or {}
        r = meta.get("request")
        if not isinstance(r, dict) or r.get("model") not in catalog.MODELS:
            return (gr.skip(),) * n + (common.message_html("error", f"{Path(path).name} has no settings of "
                                                           "this app in it."),)
        spec = catalog.get(r["model"])
        ready = [c[1] for c in common.runnable_choices(common.model_status(self.ctx.engine)[0])]
        w, h = r.get("width") or spec.default_size[0], r.get("height") or spec.default_size[1]
        limit, why = common.frames_limit(self.ctx.engine, spec, w, h)
        a14b = spec.experts == 2
        vals = (
            gr.update(value=r["model"]) if r["model"] in ready else gr.skip(),
            r.get("prompt", ""), r.get("negative_prompt") or DEFAULT_NEGATIVE_PROMPT,
            gr.update(choices=common.size_choices(spec) + ([common.size_label(w, h)]
                      if (w, h) not in spec.sizes else []), value=common.size_label(w, h)),
            gr.update(maximum=max(limit, r.get("frames") or 1), value=r.get("frames") or spec.frames),
            r.get("steps") or spec.steps, r.get("shift") or spec.shift,
            r.get("guidance") if r.get("guidance") is not None else spec.guidance,
            gr.update(value=r.get("guidance_2") or spec.guidance_2 or 3.0, visible=a14b),
            gr.update(value=r.get("boundary") or spec.boundary or 0.875, visible=a14b),
            r.get("solver") or "unipc", "fixed", r.get("seed") if r.get("seed") is not None else 42,
        )
        note = f"Loaded the settings of {Path(path).name} (seed fixed to {r.get('seed')})."
        if r["model"] not in ready:
            note += f" Its model, {spec.name}, is not installed here: the model was left as it is."
        return vals + (common.message_html("ok", note),)

    # ------------------------------------------------------------------------------------------ setup
    def rescan(self):
        statuses, err = common.model_status(self.ctx.engine, refresh=True)
        choices = common.runnable_choices(statuses)
        ids = [c[1] for c in choices]
        md = common.missing_markdown(statuses, self.ctx.engine.models_dirs) + (f"\n\n{err}" if err else "")
        return (gr.update(choices=choices, value=ids[0] if ids else None),
                gr.update(value=md, visible=not ids), md, gr.update(visible=bool(ids)),
                gr.update(visible=not ids), gr.update(interactive=bool(ids)),
                gr.update(choices=[(s.spec.name, s.spec.id) for s in statuses
                                   if not s.runnable and not s.spec.tiny]))

    def install_tiny(self):
        target = self.ctx.models_dir / "tiny-demo"
        n_out = 1 + 7
        yield (common.message_html("info", f"Writing the tiny demo models into {target}…"),) + (gr.skip(),) * 7
        done = threading.Event()
        result: dict = {}

        def work():
            try:
                from wan_app import tiny
                result["layouts"] = tiny.build_all(target)
            except Exception as e:  # noqa: BLE001
                log.exception("writing tiny models failed")
                result["error"] = e
            finally:
                done.set()
        threading.Thread(target=work, daemon=True).start()
        done.wait()
        if "error" in result:
            yield (common.message_html("error", f"Could not write the tiny models: {result['error']}",
                                       "check that the models folder is writable"),) + (gr.skip(),) * (n_out - 1)
            return
        yield (common.message_html("ok", f"Tiny demo models written to {target}. Pick one and press "
                                   "Generate."),) + self.rescan()

    def download(self, model_id):
        spec = common.spec_or_none(model_id)
        if spec is None:
            yield (common.message_html("error", "Choose a model to download."),) + (gr.skip(),) * 7
            return
        from wan_app.checkpoints import download_missing
        msgs: list[str] = []
        result: dict = {}

        def work():
            try:
                result["paths"] = download_missing(spec, self.ctx.models_dir,
                                                   lambda name, i, n: msgs.append(f"file {i + 1}/{n}: {name}"))
            except UserError as e:
                result["error"] = e
            except Exception as e:  # noqa: BLE001
                result["error"] = UserError("download", f"{type(e).__name__}: {e}", "")
        t = threading.Thread(target=work, daemon=True)
        t.start()
        shown = 0
        while t.is_alive():
            t.join(1.0)
            if len(msgs) != shown:
                shown = len(msgs)
                yield (common.message_html("info", f"Downloading {spec.name}: {msgs[-1]}…"),) + (gr.skip(),) * 7
        if "error" in result:
            e = result["error"]
            yield (common.message_html("error", e.problem, e.fix),) + (gr.skip(),) * 7
            return
        yield (common.message_html("ok", f"{spec.name}: {len(result['paths'])} file(s) downloaded."),) + self.rescan()


def metadata_text(meta: dict) -> str:
    return json.dumps(meta, indent=2, ensure_ascii=False)
