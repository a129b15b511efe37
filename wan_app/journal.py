"""The long-video journal: what a window-by-window job needs to continue after a crash, an OOM or Stop.

Beside `clip.mp4` live `clip.journal.json` (this record) and `clip.overlap-00003.npy` (the exact uint8
frames window 3 continues from). The overlap is kept losslessly because the video on disk is H.264:
re-reading it would hand a resumed job slightly different frames than the uninterrupted run used, and
the two videos would differ. Every file is replaced atomically, so a kill at any moment leaves either
the old or the new state, never a torn one.
"""
from __future__ import annotations

import glob
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import UserError
from .media import write_text_atomic

VERSION = 1
SUFFIX = ".journal.json"


def journal_path(video: str | os.PathLike) -> Path:
    video = Path(video)
    return video.with_name(video.stem + SUFFIX)


def video_path(journal: str | os.PathLike) -> Path:
    journal = Path(journal)
    return journal.with_name(journal.name[: -len(SUFFIX)] + ".mp4")


def overlap_path(video: str | os.PathLike, window: int) -> Path:
    """The frames window `window` starts from."""
    video = Path(video)
    return video.with_name(f"{video.stem}.overlap-{window:05d}.npy")


def save_overlap(video: Path, window: int, frames: np.ndarray) -> Path:
    path = overlap_path(video, window)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(frames, dtype=np.uint8), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_overlap(video: Path, window: int) -> np.ndarray:
    path = overlap_path(video, window)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError("resume", f"the overlap frames {path.name} are missing or damaged "
                        f"({e.__class__.__name__})", "start the video again") from None


@dataclass
class Journal:
    video: str                      # the output mp4 (absolute path when written)
    request: dict                   # LongRequest.to_dict(), with the seed already chosen
    windows: list[int]              # frames generated per window (plan_windows)
    windows_done: int = 0
    segments: int = 0               # GrowingVideo segments once `windows_done` windows are in
    frames_done: int = 0            # frames in the video so far, input video included
    frames_total: int = 0           # frames the finished video will have
    input_frames: int = 0           # frames that came from the input video (extend), 0 from text
    updated: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    version: int = VERSION

    @property
    def path(self) -> Path:
        return journal_path(self.video)

    def save(self) -> None:
        self.updated = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_text_atomic(self.path, json.dumps(asdict(self), ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Journal":
        """From the journal file or the video it belongs to."""
        path = Path(path)
        if not path.name.endswith(SUFFIX):
            path = journal_path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')}")
            j = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
            j.windows = [int(w) for w in j.windows]
        except FileNotFoundError:
            raise UserError("resume", f"{path.name} does not exist",
                            "pick a video listed as resumable (it has a .journal.json beside it)") from None
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise UserError("resume", f"{path.name} is damaged ({e})", "start the video again") from None
        # The journal travels with its video: trust its folder, not an absolute path from another machine.
        j.video = str(video_path(path))
        return j

    def discard(self) -> None:
        """The video is final: remove the journal and every overlap file of this job."""
        video = Path(self.video)
        for p in video.parent.glob(glob.escape(video.stem) + ".overlap-*.npy"):
            p.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
