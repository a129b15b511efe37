"""Every call the UI makes into the engine, in one place.

The engine's surface: `Engine.plan(job, overrides)`, `Engine.run(job, cancel=..., overrides=...)` for a
clip (Request) or a long video (LongRequest), `Engine.resume(path, cancel=...)`, `Engine.inventory()`
(re-read where a folder changed), `planner.validate_overrides`, `longvideo.list_resumable`.

Overrides are always passed per job: a session's choices never become the engine's defaults, so one
browser's Settings cannot change what another browser's run does.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Iterator

from wan_app import events, planner
from wan_app.errors import UserError
from wan_app.plan_types import Overrides
from wan_app.request import Request, resolve

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- models
def inventory(engine, refresh: bool = False):
    """The model folders as they are now; `refresh` reads every header again (the Rescan button)."""
    return engine.inventory(refresh=refresh)


def inventory_problems(inv) -> list[str]:
    """Lines about odd files in the model folders (skipped, not fatal)."""
    try:
        return list(inv.problems())
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
        return lr(outputs_dir)
    except Exception as e:  # noqa: BLE001 - one unreadable journal must not hide the page
        log.warning("listing resumable jobs failed: %s", e)
        return []


# ---------------------------------------------------------------------------------------------- plans
def plan(engine, job, overrides: Overrides | None):
    """The plan a job would run with, from the files that would load. Raises UserError for bad input;
    a job that cannot run comes back with `plan.blocker` set."""
    return engine.plan(job, overrides=overrides or Overrides())


def plan_size(engine, spec, width: int, height: int, frames: int, overrides: Overrides | None):
    """The planner's view of a size without any files (the Settings preview and the frame limit): pure,
    so it answers also for a model whose files are not complete yet."""
    return planner.plan(engine.hardware, spec, width, height, frames, overrides or Overrides())


def validate_overrides(engine, spec, overrides: Overrides) -> None:
    """Raise UserError naming the field when an override cannot work for this model on this machine."""
    planner.validate_overrides(engine.hardware, spec, overrides)


def compile_unavailable(hw) -> str | None:
    """Why torch.compile of the blocks cannot run on this machine, or None when it can (the planner's rule)."""
    from wan_app.compile_blocks import unavailable_reason
    return unavailable_reason(hw.device.split(":")[0], hw.triton)


def check_request(req: Request):
    """(complete request, spec) or UserError naming the field: the engine's own input rules."""
    return resolve(req)


# ---------------------------------------------------------------------------------------------- runs
def run(engine, job, cancel: threading.Event, overrides: Overrides | None) -> Iterator[events.Event]:
    """Run a clip (Request) or a long video (LongRequest) and yield its events. The engine runs the job
    in its own thread; closing this iterator (the page went away) stops it after its current step."""
    return engine.run(job, cancel=cancel, overrides=overrides or Overrides())


def resume(engine, path: Path, cancel: threading.Event) -> Iterator[events.Event]:
    return engine.resume(path, cancel=cancel)


__all__ = ["UserError", "compile_unavailable", "inventory", "inventory_problems", "list_resumable",
           "long_request_type", "plan", "plan_size", "validate_overrides", "check_request", "run", "resume"]
