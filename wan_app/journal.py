"""The long-video journal: what a window-by-window job needs to continue after a crash, an OOM or Stop.

Beside `clip.mp4` live `clip.journal.json` (this record) and `clip.overlap-00003.npy` (the exact uint8
frames window 3 continues from). The overlap is kept losslessly because the video on disk is H.264:
re-reading it would hand a resumed job slightly different frames than the uninterrupted run used, and
the two videos would differ. Every file is replaced atomically, so a kill at any moment leaves either
the old or the new state, never a torn one.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import uuid
from collections.abc import Iterator
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

    def lock(self):
        """`with journal.lock():` — this job may run in one place only (see lock_job)."""
        return lock_job(self.video)

    def discard(self) -> None:
        """The video is final: remove the journal and every overlap file of this job."""
        video = Path(self.video)
        for p in video.parent.glob(glob.escape(video.stem) + ".overlap-*.npy"):
            p.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ one run per job

def lock_path(video: str | os.PathLike) -> Path:
    """Hidden, beside the video: `.clip.lock` (the outputs listing and the gallery skip hidden names)."""
    video = Path(video)
    return video.with_name(f".{video.stem}.lock")


@contextlib.contextmanager
def lock_job(video: str | os.PathLike) -> Iterator[Path]:
    """Hold the job of `video` for the duration of the block, or raise UserError("resume") at once if
    another run holds it (a second `extend --resume`, the web app, another thread of this process).

    Linux/macOS: flock on the lock file. The kernel drops it when the holder dies, even by SIGKILL, so a
    crash never leaves a job locked. Windows: msvcrt.locking, which the OS also drops with the process.
    Elsewhere: an O_EXCL file with the holder's pid, taken over when that process is gone."""
    path = lock_path(video)
    release = _acquire(path, Path(video))
    try:
        yield path
    finally:
        release()


def _busy(video: Path, holder: str = "") -> UserError:
    return UserError("resume", f"{video.name} is already running{holder}",
                     "wait for the other run to finish, or stop it first, then resume again")


def _acquire(path: Path, video: Path):
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is not None:
        return _acquire_flock(fcntl, path, video)
    try:
        import msvcrt
    except ImportError:
        msvcrt = None
    if msvcrt is not None:
        return _acquire_msvcrt(msvcrt, path, video)
    return _acquire_exclusive(path, video)


def _acquire_flock(fcntl, path: Path, video: Path):
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _busy(video, _holder(path)) from None
            raise
        # A holder that was releasing may have unlinked the file between our open and our flock: then
        # we hold a lock on a file nobody else can see, so start again with the file that is there now.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _write_pid(fd)
            break
        os.close(fd)

    def release():
        with contextlib.suppress(OSError):
            os.unlink(path)          # while still holding it, so no one can lock the old file after us
        os.close(fd)
    return release


def _acquire_msvcrt(msvcrt, path: Path, video: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        os.close(fd)
        raise _busy(video) from None
    _write_pid(fd)

    def release():
        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        os.close(fd)          # the file stays: Windows cannot delete an open file, and a stale one is harmless
    return release


def _acquire_exclusive(path: Path, video: Path):
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pid = _holder_pid(path)
            if pid is not None and _alive(pid):
                raise _busy(video, f" (process {pid})") from None
            with contextlib.suppress(OSError):
                os.unlink(path)        # its holder is gone: the job is free
            continue
        _write_pid(fd)
        os.close(fd)

        def release():
            with contextlib.suppress(OSError):
                os.unlink(path)
        return release
    raise _busy(video)


def _write_pid(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())


def _holder_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "x")
    except (OSError, ValueError):
        return None


def _holder(path: Path) -> str:
    pid = _holder_pid(path)
    return f" (process {pid})" if pid is not None else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True           # exists, owned by someone else
    return True
