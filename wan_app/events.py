"""What the engine tells its consumers (UI, CLI, tests) while it works. Plain data, no behaviour."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Event:
    pass


@dataclass
class PlanReady(Event):
    plan: Any                        # wan_app.planner.Plan
    reasons: list[str] = field(default_factory=list)


@dataclass
class Progress(Event):
    phase: str                       # load | encode | sample | decode | write
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    message: str = ""
    window: int | None = None        # long video: 0-based window index
    windows: int | None = None


@dataclass
class Preview(Event):
    step: int                        # 1-based step just finished
    total: int
    frames: np.ndarray               # uint8 [F, h, w, 3], the predicted clean video, downscaled
    expert: str | None = None        # "high" / "low" for A14B
    window: int | None = None


@dataclass
class ExpertSwitch(Event):
    step: int                        # 0-based index of the first step run by the new expert
    from_expert: str
    to_expert: str
    seconds: float                   # time spent moving weights at the switch
    window: int | None = None


@dataclass
class Notice(Event):
    """Something the user should know that is not an error: a fallback, a retry after OOM."""
    message: str


@dataclass
class WindowDone(Event):
    window: int
    windows: int
    frames_total: int
    path: Path                       # the playable video so far


@dataclass
class Finished(Event):
    path: Path
    metadata: dict
    seconds: float


@dataclass
class Cancelled(Event):
    message: str = "Stopped."
    path: Path | None = None         # long video: what was finished before the stop


@dataclass
class Failed(Event):
    message: str
    hint: str = ""
