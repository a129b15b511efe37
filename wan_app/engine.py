"""The engine's public surface: plan a request, run a job, get events.

    engine = Engine(models_dirs, outputs_dir)
    plan = engine.plan(request)                      # the plan that run() will carry out, with its reasons
    for event in engine.run(request):                # a clip (Request) or a long video (LongRequest)
        ...
    for event in engine.resume(path): ...            # an interrupted long video

The work itself is wan_app.pipeline (one runner for clips and long videos); the loaded models live in
wan_app.model_host; the loop is wan_app.sampler; the VAE is wan_app.vae_codec. A job runs in a worker
thread that reports through one callback, and run() hands those events to the caller as an iterator, so
inner steps never return values through generators.
"""
from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

from . import events, planner, sampler, stepcache
from .checkpoints import InventoryCache
from .hardware import Hardware, detect
from .longvideo import LongRequest
from .model_host import ModelHost
from .pipeline import clip_job, long_job, long_layout, resumed_job, run_job
from .plan_types import DiskWeights, Overrides, Plan
from .errors import UserError
from .request import Request, resolve

_DONE = object()


class _Stop:
    """The caller's cancel event, or the caller having stopped listening."""

    def __init__(self, cancel: threading.Event | None):
        self.cancel = cancel
        self.abandoned = threading.Event()

    def is_set(self) -> bool:
        return self.abandoned.is_set() or (self.cancel is not None and self.cancel.is_set())


class Engine:
    def __init__(self, models_dirs: list[str | Path], outputs_dir: str | Path,
                 hardware: Hardware | None = None, overrides: Overrides | None = None):
        self.models_dirs = [Path(d) for d in models_dirs]
        self.outputs_dir = Path(outputs_dir)
        self.hardware = hardware or detect()
        self.overrides = overrides or Overrides()     # the default for jobs that bring none
        self.host = ModelHost()
        self._inventories = InventoryCache()
        self._lock = threading.Lock()
        # Called as hook(step_index, expert) before each step; tests inject faults (e.g. an OOM) here.
        self.step_hooks: list[Callable[[int, str], None]] = []

    # ---- inputs -----------------------------------------------------------------------------------
    def inventory(self, refresh: bool = False):
        """What the models folders hold; re-read only where a folder changed (refresh: every header)."""
        return self._inventories.get(self.models_dirs, refresh=refresh)

    def plan(self, job: Request | LongRequest, overrides: Overrides | None = None,
             files_required: bool = True) -> Plan:
        """The plan run() would carry out for this job on this machine, from the files that will really
        load. Raises UserError for bad input (and for missing files unless `files_required` is False: then
        the plan assumes files in the dtype it chooses). A job that cannot run has `plan.blocker` set."""
        if isinstance(job, LongRequest):
            base, _, _, windows = long_layout(self, job, overrides, files_required, runnable=False)
            job = replace(base, frames=max(windows) if windows else 1)
        # A plan needs no image: without one it is made at the request's (or the model's) size.
        return self._plan_clip(job, overrides, runnable=False, files_required=files_required,
                               image_from_video=job.image is None)[0]

    def _plan_clip(self, req: Request, overrides: Overrides | None, runnable: bool = True,
                   files_required: bool = True, image_from_video: bool = False):
        """(plan, resolved request, spec, files, LoRA uses) for one clip; refuses a plan with a blocker
        when it is to run. LoRAs are found and checked against the model from their headers here."""
        req, spec = resolve(req, image_from_video=image_from_video)
        try:
            files = self.inventory().resolve(spec.id)
        except UserError:
            if files_required:
                raise
            files = None
        uses = self.loras_for(req, spec)
        cache = stepcache.for_request(req, spec, req.cache, req.cache_threshold)
        p = planner.plan(self.hardware, spec, req.width, req.height, req.frames,
                         self.overrides if overrides is None else overrides,
                         disk=DiskWeights.of(files, uses), cfg_passes=_cfg_passes(req),
                         step_cache=cache.summary() if cache is not None else "off")
        if runnable:
            planner.require_runnable(p)     # a model or frame count that cannot fit is refused here
        return p, req, spec, files, uses

    def loras_for(self, req: Request, spec) -> list:
        """The request's LoRAs resolved to files per expert (wan_app.lora.LoraUse), checked to fit."""
        if not req.loras:
            return []
        from . import lora
        choices = [lora.LoraChoice(e["file"], e["strength"], e["strength_low"]) for e in req.loras]
        return lora.resolve(choices, spec, lora.find_loras(self.models_dirs))

    def replan_after_oom(self, job) -> Plan | None:
        req = job.request
        return planner.replan_after_oom(job.plan, self.hardware, job.spec, req.width, req.height, req.frames,
                                        disk=DiskWeights.of(job.files, job.loras), cfg_passes=_cfg_passes(req))

    # ---- jobs -------------------------------------------------------------------------------------
    def run(self, job: Request | LongRequest, cancel: threading.Event | None = None,
            out_path: Path | None = None, overrides: Overrides | None = None) -> Iterator[events.Event]:
        """Make one video: a clip of `job.frames` (Request) or a long video window by window (LongRequest).
        Never raises for expected failures: they arrive as Failed events; bad input fails before any
        model loads."""
        out = Path(out_path) if out_path else None
        if isinstance(job, LongRequest):
            return self._stream(lambda locks: long_job(self, job, out, overrides, locks), cancel)
        return self._stream(lambda locks: clip_job(self, job, out, overrides), cancel)

    def resume(self, path: str | Path, cancel: threading.Event | None = None) -> Iterator[events.Event]:
        """Continue an interrupted long video from its journal. `path`: the output mp4 or its journal."""
        return self._stream(lambda locks: resumed_job(self, Path(path), locks), cancel)

    def _stream(self, make_job, cancel) -> Iterator[events.Event]:
        q: queue.Queue = queue.Queue()
        stop = _Stop(cancel)

        def work():
            try:
                run_job(self, make_job, q.put, stop)
            finally:
                q.put(_DONE)
        worker = threading.Thread(target=work, name="wan-job", daemon=True)
        worker.start()
        try:
            while (ev := q.get()) is not _DONE:
                yield ev
        except GeneratorExit:
            stop.abandoned.set()       # the caller stopped listening: stop after this step
            worker.join()
            raise
        except BaseException:
            stop.abandoned.set()       # e.g. a second Ctrl+C: leave at once, the worker stops after its step
            raise

    @contextmanager
    def busy(self):
        """One job at a time on this engine (the GPU); long-video jobs hold it for all their windows."""
        with self._lock:
            yield

    def unload(self) -> None:
        self.host.unload()


def _cfg_passes(req: Request) -> int:
    return 2 if sampler.needs_negative_prompt(req) else 1
