"""Every call the UI makes into the engine, in one place.

The engine is moving to one job pipeline (`Engine.plan(job, overrides)`, `Engine.run(job, cancel=...,
overrides=...)`, `Engine.resume(path, cancel=...)`). Until every piece of it has landed this module also
speaks the older surface (`Engine.run(request, cancel)`, `longvideo.run_long`/`resume_long`, the engine-wide
`Engine.overrides`), chosen by what the engine object offers. Switching over is this file only.

Overrides are always per job here: a session's choices never become the engine's defaults, so one
browser's Settings cannot change what another browser's run does.
"""
from __future__ import annotations

import inspect
import logging
import queue
import threading
from pathlib import Path
from typing import Callable, Iterator

from wan_app import catalog, events
from wan_app.errors import UserError
from wan_app.plan_types import Overrides
from wan_app.request import Request, resolve

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- models
def inventory(engine, refresh: bool = False):
    return engine.inventory(refresh=refresh)


def current_inventory(engine):
    """The model folders as they are now. With the change-detecting cache (checkpoints.scan_cached) a
    plain call re-reads only what changed; an older engine needs a full rescan to see anything new."""
    try:
        from wan_app.checkpoints import scan_cached  # noqa: F401
        return engine.inventory(refresh=False)
    except ImportError:
        return engine.inventory(refresh=True)


def inventory_problems(inv) -> list[str]:
    """Lines about odd files in the model folders (skipped, not fatal), when the scanner reports them."""
    problems = getattr(inv, "problems", None)
    try:
        return list(problems() if callable(problems) else (problems or []))
    except Exception:  # noqa: BLE001 - a report about problems must not become one
        return []


def long_request_type():
    """wan_app.longvideo.LongRequest, or None when this version has no long videos."""
    try:
        from wan_app.longvideo import LongRequest
        return LongRequest
    except ImportError:
        return None


def list_resumable(outputs_dir: Path):
    try:
        from wan_app.longvideo import list_resumable as lr
    except ImportError:
        return []
    try:
        return lr(outputs_dir)
    except Exception as e:  # noqa: BLE001 - one unreadable journal must not hide the page
        log.warning("listing resumable jobs failed: %s", e)
        return []


# ---------------------------------------------------------------------------------------------- plans
def _new_api(engine) -> bool:
    try:
        return "overrides" in inspect.signature(engine.run).parameters
    except (TypeError, ValueError):
        return False


def plan(engine, job, overrides: Overrides | None):
    """The plan a job would run with, from the files that would load. Raises UserError for bad input;
    a job that cannot run comes back with `plan.blocker` set."""
    if hasattr(engine, "plan"):
        return engine.plan(job, overrides=overrides)
    from wan_app import planner
    req = job.base if hasattr(job, "base") else job
    req, spec = resolve(req)
    files = engine.inventory().resolve(spec.id)
    return planner.plan(engine.hardware, spec, req.width, req.height, req.frames, overrides or Overrides(),
                        weights_on_disk=getattr(files, "dit_dtype", None))


def plan_size(engine, spec, width: int, height: int, frames: int, overrides: Overrides | None):
    """The planner's view of a size without any files (the Settings preview and the frame limit): pure,
    so it answers also for a model whose files are not complete yet."""
    from wan_app import planner
    return planner.plan(engine.hardware, spec, width, height, frames, overrides or Overrides())


def validate_overrides(engine, spec, overrides: Overrides) -> None:
    """Raise UserError naming the field when an override cannot work for this model on this machine."""
    from wan_app import planner
    check = getattr(planner, "validate_overrides", None)
    if check is not None:
        check(engine.hardware, spec, overrides)
        return
    # Older planner: its plan() validates overrides first; the smallest job leaves only the value checks
    # and "cannot fit even then".
    w, h = min(spec.sizes, key=lambda s: s[0] * s[1])
    planner.plan(engine.hardware, spec, w, h, 1, overrides)


# ---------------------------------------------------------------------------------------------- runs
_DONE = object()


def _in_thread(make_stream: Callable[[], Iterator[events.Event]], cancel: threading.Event
               ) -> Iterator[events.Event]:
    """The older engine's streams are plain generators: iterate one in its own thread so an abandoned
    page (Gradio stops pulling) cannot leave it suspended mid-step holding the engine; `finally` sets
    the cancel event, and the engine ends at its next step boundary."""
    q: queue.Queue = queue.Queue()

    def work():
        try:
            for ev in make_stream():
                q.put(ev)
        except Exception as e:  # noqa: BLE001 - the page must get a message, not a dead spinner
            log.exception("engine stream failed")
            q.put(events.Failed(f"{type(e).__name__}: {e}", "see the console log for details"))
        finally:
            q.put(_DONE)

    threading.Thread(target=work, name="engine-run", daemon=True).start()
    try:
        while (ev := q.get()) is not _DONE:
            yield ev
    finally:
        cancel.set()


class _EngineOverrides:
    """Older engines read `engine.overrides` when a job starts: set the job's own for its duration. Safe
    because GPU jobs run one at a time (the UI's queue has concurrency 1 and the engine its lock)."""

    def __init__(self, engine, overrides: Overrides | None):
        self.engine, self.overrides = engine, overrides or Overrides()

    def wrap(self, stream: Iterator[events.Event]) -> Iterator[events.Event]:
        saved = self.engine.overrides
        self.engine.overrides = self.overrides
        try:
            yield from stream
        finally:
            self.engine.overrides = saved


def run(engine, job, cancel: threading.Event, overrides: Overrides | None) -> Iterator[events.Event]:
    """Run a clip (Request) or a long video (LongRequest) and yield its events."""
    if _new_api(engine):
        return engine.run(job, cancel=cancel, overrides=overrides)
    if hasattr(job, "base"):
        from wan_app import longvideo
        make = lambda: longvideo.run_long(engine, job, cancel=cancel)  # noqa: E731
    else:
        make = lambda: engine.run(job, cancel)  # noqa: E731
    return _EngineOverrides(engine, overrides).wrap(_in_thread(make, cancel))


def resume(engine, path: Path, cancel: threading.Event, overrides: Overrides | None) -> Iterator[events.Event]:
    if hasattr(engine, "resume"):
        return engine.resume(path, cancel=cancel)
    from wan_app import longvideo
    return _EngineOverrides(engine, overrides).wrap(
        _in_thread(lambda: longvideo.resume_long(engine, path, cancel=cancel), cancel))


def check_request(req: Request):
    """(complete request, spec) or UserError naming the field: the engine's own input rules."""
    return resolve(req)


def spec_of(model_id: str | None):
    return catalog.MODELS.get(model_id) if model_id else None


__all__ = ["UserError", "inventory", "inventory_problems", "list_resumable", "long_request_type", "plan",
           "plan_size", "validate_overrides", "run", "resume", "check_request", "spec_of"]
