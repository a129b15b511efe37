"""Long videos (Extend): the arithmetic of windows, the request, and how a window joins the video.

The windows run in the one job pipeline (wan_app.pipeline), like a clip of one window.

The models are trained on 81 frames (TI2V 5B: 121). A longer video is made of windows that share O = 4m+1
frames (default 5) with what came before:

1. the last O frames are re-encoded with the VAE as the start of a new clip: O frames → (O−1)/4+1 latent
   frames, because the causal VAE packs the first frame alone and then 4 frames per latent frame;
2. before every denoising step those latents are put back, noised to the step's σ with a fixed noise
   tensor (flow matching: x = (1−σ)·z + σ·ε), so the rest of the window is denoised *around* them and
   continues their motion. This works for pure text-to-video models, which Wan2GP refuses to extend.
   TI2V 5B (Wan2.2 VAE) instead uses the conditioning it was trained with for its image: the overlap
   latents are given to the model clean, with timestep 0 on their tokens (sampler.CleanFirstLatents);
3. after the last step the overlap latents are put back clean (σ = 0), the window is decoded, its colours
   are matched to the overlap (wan_app.colormatch), the O overlap frames are dropped (not duplicated) and
   the rest is appended to the output mp4 on disk (media.GrowingVideo).

Only one window of frames is ever held in RAM. After each window a journal (wan_app.journal) records
the exact overlap frames and where the job stands, so a crash, an OOM or Stop leaves a playable video
of the finished windows and `Engine.resume` continues bit-exactly: each window's seed is derived from the
base seed and the window index, never from RNG state that a restart would lose.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from .colormatch import match_color
from .errors import UserError
from .journal import SUFFIX, Journal
from .request import Request

DEFAULT_OVERLAP = 5


@dataclass
class LongRequest:
    base: Request                 # model, prompt (one line per window; the last line repeats), size, seed...
    total_frames: int             # length of the whole result (from text) / frames to add (extend)
    window: int | None = None     # frames per window (4n+1); default: training length capped by the plan
    overlap: int | None = None    # O = 4m+1 frames shared with the previous window; default 5
    color_match: float = 1.0      # 0 = off; strength of the LAB mean/std match
    input_video: Path | None = None   # extend this video instead of starting from text

    def to_dict(self) -> dict:
        return {"base": self.base.to_dict(), "total_frames": self.total_frames, "window": self.window,
                "overlap": self.overlap, "color_match": self.color_match,
                "input_video": str(self.input_video) if self.input_video else None}

    @classmethod
    def from_dict(cls, d: dict) -> "LongRequest":
        return cls(base=Request.from_dict(d["base"]), total_frames=int(d["total_frames"]),
                   window=d.get("window"), overlap=d.get("overlap"),
                   color_match=float(d.get("color_match", 1.0)),
                   input_video=Path(d["input_video"]) if d.get("input_video") else None)


@dataclass
class ResumableJob:
    path: Path                    # the output mp4 (playable: the finished windows)
    prompt: str
    frames_done: int
    frames_total: int
    updated: datetime


# ---- pure arithmetic --------------------------------------------------------------------------
def _is_4n1(v) -> bool:
    return isinstance(v, int) and v >= 1 and (v - 1) % 4 == 0


def plan_windows(total_frames: int, window: int, overlap: int, first_from_video: bool) -> list[int]:
    """Frames generated per window. From text the first window is a plain clip; every other window
    (and the first one when extending a video) starts with the `overlap` frames it continues and adds
    `window − overlap` new ones. The last window is only as long as needed, rounded up to the VAE's 4n+1
    grid; the few frames past `total_frames` are generated and then left out of the video."""
    if not _is_4n1(overlap):
        raise UserError("overlap", f"{overlap} is not of the form 4m+1",
                        "use 1, 5, 9, … (the VAE packs 4 frames per latent frame after the first)")
    if not _is_4n1(window):
        raise UserError("window", f"{window} is not of the form 4n+1", "use e.g. 33, 49 or 81")
    if window < overlap + 4:
        raise UserError("window", f"{window} frames leave no room for new frames after an overlap of "
                        f"{overlap}", f"use a window of at least {overlap + 4} frames or a smaller overlap")
    if not isinstance(total_frames, int) or total_frames < 1:
        raise UserError("frames", f"{total_frames} is not a positive number of frames",
                        "ask for at least 1 frame")
    windows: list[int] = []
    remaining = total_frames
    if not first_from_video:
        first = min(window, (remaining - 1 + 3) // 4 * 4 + 1)
        windows.append(first)
        remaining -= first
    while remaining > 0:
        new = min(window - overlap, (remaining + 3) // 4 * 4)
        windows.append(overlap + new)
        remaining -= new
    return windows


def new_frames(windows: list[int], overlap: int, total_frames: int, first_from_video: bool) -> list[int]:
    """Frames each window adds to the video: its length minus the overlap (none for a first window from
    text), the last one cut to reach exactly `total_frames`."""
    out, remaining = [], total_frames
    for k, w in enumerate(windows):
        add = min(w if (k == 0 and not first_from_video) else w - overlap, remaining)
        out.append(add)
        remaining -= add
    return out


def window_seed(seed: int, window: int) -> int:
    """Window 0 uses the seed itself (a long video starts like the short clip with that seed); later
    windows a value derived from (seed, window) with numpy's SeedSequence hash, so a resumed job draws
    exactly the noise an uninterrupted one would, without any saved RNG state."""
    if window == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(window)]).generate_state(1, dtype=np.uint32)[0])


def prompt_for(prompt: str, window: int) -> str:
    """One prompt line per window; the last line repeats for the windows after it."""
    lines = [ln.strip() for ln in prompt.splitlines() if ln.strip()]
    return lines[min(window, len(lines) - 1)] if lines else prompt


# ---- one window -------------------------------------------------------------------------------
def join_window(frames: np.ndarray, overlap: np.ndarray | None, color_match: float, keep: int) -> np.ndarray:
    """The frames a window adds to the video: colours matched to the overlap it continues (measured on
    the window's own copy of the overlap), the overlap dropped, cut to `keep` frames."""
    if overlap is None:
        return frames[:keep]
    o = len(overlap)
    if color_match > 0:
        frames = match_color(frames[o:o + keep], measured=frames[:o], reference=overlap, strength=color_match)
        return frames
    return frames[o:o + keep]


# ---- public entry points ----------------------------------------------------------------------
def list_resumable(outputs_dir: str | Path) -> list[ResumableJob]:
    """Unfinished long videos in the outputs folder (and its day folders), newest first."""
    root = Path(outputs_dir)
    if not root.is_dir():
        return []
    jobs = []
    for p in [*root.glob("*" + SUFFIX), *root.glob("*/*" + SUFFIX)]:
        try:
            j = Journal.load(p)
            prompt = j.request["base"]["prompt"]
            updated = datetime.fromisoformat(j.updated)
        except (UserError, KeyError, TypeError, ValueError):
            continue
        jobs.append(ResumableJob(Path(j.video), prompt, j.frames_done, j.frames_total, updated))
    jobs.sort(key=lambda r: r.updated, reverse=True)
    return jobs
