"""The outputs folder: where each video goes, what is already there, and what may be served from it.

Layout: `<outputs_dir>/<YYYY-MM-DD>/<HHMMSS>_<prompt-slug>_<seed>.mp4`, with `<same name>.json` beside each
video (its settings) and, for videos that grow window by window, a `<same name>.parts/` folder.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .media import parts_dir, read_metadata, sidecar_path

SLUG_MAX = 40


@dataclass
class OutputItem:
    path: Path
    created: dt.datetime         # the file's modification time: when the video became complete
    metadata: dict | None        # the generation settings, None for a video without ours


def slugify(text: str, max_len: int = SLUG_MAX) -> str:
    """ASCII-safe file name part: accents folded (é -> e), everything else non-alphanumeric becomes a
    single '-', at most `max_len` chars, never empty (a prompt in e.g. Chinese becomes 'video')."""
    ascii_text = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    slug = slug[:max_len].rstrip("-")
    return slug or "video"


def new_output_path(outputs_dir: str | os.PathLike, prompt: str, seed: int,
                    now: dt.datetime | None = None) -> Path:
    """A fresh path for a new video; creates the day folder. Never an existing name: a clash (two videos
    with the same prompt and seed in the same second) gets `-2`, `-3`, ... appended."""
    now = now or dt.datetime.now()
    day = Path(outputs_dir) / now.strftime("%Y-%m-%d")
    day.mkdir(parents=True, exist_ok=True)
    base = f"{now.strftime('%H%M%S')}_{slugify(prompt)}_{seed}"
    n = 1
    while True:
        path = day / (f"{base}.mp4" if n == 1 else f"{base}-{n}.mp4")
        # the sidecar and parts folder count too: taking over either would mix two videos' files
        if not (path.exists() or sidecar_path(path).exists() or parts_dir(path).exists()):
            return path
        n += 1


def ensure_writable(directory: str | os.PathLike) -> Path:
    """Create the folder if needed and prove a file can be written there (permissions alone do not tell:
    read-only mounts, full disks, root ignoring mode bits)."""
    path = Path(directory).expanduser()
    fix = "choose another folder with --outputs-dir"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True) as f:
            f.write(b"ok")
            f.flush()
    except OSError as e:
        raise UserError("outputs_dir", f"{path} is not writable ({e.strerror or e.__class__.__name__})",
                        fix) from None
    return path


def list_outputs(outputs_dir: str | os.PathLike, limit: int = 100, with_metadata: bool = True
                 ) -> list[OutputItem]:
    """Finished videos, newest first: `.mp4` files in the day folders (and the top folder), leaving out
    hidden temp files being written, empty files and the segments inside `.parts` folders."""
    root = Path(outputs_dir)
    if not root.is_dir():
        return []
    found: list[tuple[float, Path]] = []
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir() and _listable(p))]:
        for p in folder.iterdir():
            if p.suffix.lower() != ".mp4" or not _listable(p):
                continue
            try:
                st = p.stat()
            except OSError:
                continue   # deleted while listing
            if p.is_file() and st.st_size > 0:
                found.append((st.st_mtime, p))
    found.sort(key=lambda t: (t[0], t[1].name), reverse=True)
    return [OutputItem(path=p, created=dt.datetime.fromtimestamp(mtime),
                       metadata=read_metadata(p) if with_metadata else None)
            for mtime, p in found[:limit]]


def _listable(p: Path) -> bool:
    return not p.name.startswith(".") and not p.name.endswith(".parts")


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True if `path`, with symlinks and `..` resolved, lies inside `root` (also resolved). The UI serves
    a file only if this holds for the outputs folder."""
    try:
        target = Path(os.path.realpath(path))
        base = Path(os.path.realpath(root))
    except (OSError, ValueError):
        return False
    return target == base or base in target.parents
