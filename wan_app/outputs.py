"""The outputs folder: where each video goes, what is already there, and what may be served from it.

Layout: `<outputs_dir>/<YYYY-MM-DD>/<HHMMSS>_<prompt-slug>_<seed>.mp4`, with `<same name>.json` beside each
video (its settings) and, for videos that grow window by window, a `<same name>.parts/` folder and, until
they are finished, a `<same name>.journal.json`.

Whatever is in the outputs folder may be served to a browser, so the folder must be one the app owns
(`check_outputs_dir`), and only finished, regular videos are listed.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import stat
import sys
import tempfile
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .journal import journal_path
from .media import parts_dir, read_metadata, sidecar_path

SLUG_MAX = 40


@dataclass
class OutputItem:
    path: Path
    created: dt.datetime         # the file's modification time: when the video became complete
    metadata: dict | None        # the generation settings, None for a video without ours
    finished: bool = True        # False: a long video still being made (its journal is beside it)


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


def list_outputs(outputs_dir: str | os.PathLike, limit: int = 100, with_metadata: bool = True,
                 include_unfinished: bool = False) -> list[OutputItem]:
    """Finished videos, newest first: `.mp4` files in the day folders (and the top folder), leaving out
    hidden temp files being written, empty files, the segments inside `.parts` folders, symlinks (a link
    could point anywhere, and whatever is listed gets served) and long videos whose journal says they
    are not finished (listed with `finished=False` if `include_unfinished`)."""
    root = Path(outputs_dir)
    if not root.is_dir():
        return []
    found: list[tuple[float, Path, bool]] = []
    for folder in [root, *sorted(p for p in _entries(root) if _is_real_dir(p) and _listable(p))]:
        for p in _entries(folder):
            if p.suffix.lower() != ".mp4" or not _listable(p):
                continue
            try:
                st = os.lstat(p)
            except OSError:
                continue   # deleted while listing
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                continue
            finished = not os.path.lexists(journal_path(p))
            if finished or include_unfinished:
                found.append((st.st_mtime, p, finished))
    found.sort(key=lambda t: (t[0], t[1].name), reverse=True)
    return [OutputItem(path=p, created=dt.datetime.fromtimestamp(mtime),
                       metadata=read_metadata(p) if with_metadata else None, finished=finished)
            for mtime, p, finished in found[:limit]]


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []       # removed or unreadable while listing: nothing to show from it


def _listable(p: Path) -> bool:
    return not p.name.startswith(".") and not p.name.endswith(".parts")


def _is_real_dir(p: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(p).st_mode)
    except OSError:
        return False


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True if `path`, with symlinks and `..` resolved, lies inside `root` (also resolved). The UI serves
    a file only if this holds for the outputs folder."""
    try:
        target = Path(os.path.realpath(path))
        base = Path(os.path.realpath(root))
    except (OSError, ValueError):
        return False
    return target == base or base in target.parents


# ------------------------------------------------------------------------------------------ choosing the folder

DAY_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_OWN_FILES = re.compile(r".+\.(mp4|json|npy)$", re.I)

# Folders whose contents must never be served: the system's own. On POSIX they are refused with everything
# inside them; the Windows and macOS ones come from the environment / fixed install paths.
# (/opt and /srv hold add-on software and site data, legitimate homes for an app's outputs; /root is
# root's home, handled like any home: its subfolders are fine, the folder itself is not.)
_POSIX_SYSTEM = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
                 "/sbin", "/sys", "/usr", "/var", "/snap", "/System", "/Library", "/Applications", "/private",
                 "/cores")
_WINDOWS_SYSTEM_ENV = ("SystemRoot", "windir", "ProgramFiles", "ProgramFiles(x86)", "ProgramW6432",
                       "ProgramData", "APPDATA", "LOCALAPPDATA")


def _real(p) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(p))))


def _homes() -> set[Path]:
    homes = {_real(Path.home())}
    for var in ("HOME", "USERPROFILE"):
        if os.environ.get(var):
            homes.add(_real(os.environ[var]))
    try:
        import pwd
        homes |= {_real(e.pw_dir) for e in pwd.getpwall() if e.pw_dir and e.pw_dir != "/"}
    except (ImportError, OSError):
        pass
    return homes


def _system_folders() -> list[Path]:
    if sys.platform == "win32":
        out = [_real(os.environ[v]) for v in _WINDOWS_SYSTEM_ENV if os.environ.get(v)]
        return out
    return [_real(p) for p in _POSIX_SYSTEM]


def _temp_roots() -> set[Path]:
    # Subfolders of the temp folder are fine (tests, scratch runs); the shared temp folder itself is not.
    return {_real(tempfile.gettempdir()), _real("/tmp"), _real("/var/tmp")}


def _inside(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def check_outputs_dir(path: str | os.PathLike, models_dirs: Iterable[str | os.PathLike] = ()) -> Path:
    """The outputs folder chosen in the UI or on the command line, refused (UserError "outputs_dir") when
    serving it could expose what the app did not make: a filesystem root, a home folder or a folder that
    holds one, a system folder or anything inside it, the shared temp folder itself, a models folder (or
    a folder inside or around one), or an existing folder holding files the app does not write. Accepted:
    a new or empty folder, or one laid out as the app lays it out (day folders, videos, sidecars).
    Returns the resolved folder; nothing is created."""
    fix = "choose a new, empty folder for the videos (e.g. a folder named outputs next to the app)"
    p = _real(path)
    shown = os.fspath(path)
    if p.parent == p:
        raise UserError("outputs_dir", f"{shown} is the root of a drive", fix)
    temp_roots = _temp_roots()
    if p in temp_roots:
        raise UserError("outputs_dir", f"{shown} is the shared temp folder", fix)
    for system in _system_folders():
        if _inside(p, system) and not any(_inside(p, t) for t in temp_roots):
            raise UserError("outputs_dir", f"{shown} is inside the system folder {system}", fix)
    for home in _homes():
        if _inside(home, p):
            raise UserError("outputs_dir", f"{shown} is {'a home folder' if p == home else 'a folder holding home folders'}; "
                            "everything in it could be served", fix)
    for m in models_dirs:
        mp = _real(m)
        if _inside(p, mp) or _inside(mp, p):
            raise UserError("outputs_dir", f"{shown} {'is' if p == mp else 'overlaps'} the models folder {m}",
                            "keep videos and model files in separate folders")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return p                        # new: the app creates it
    except OSError as e:
        raise UserError("outputs_dir", f"{shown} cannot be read ({e.strerror or type(e).__name__})", fix) from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError("outputs_dir", f"{shown} exists and is not a folder", fix)
    foreign = sorted(e.name for e in _entries(p) if not _app_entry(e))
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError("outputs_dir", f"{shown} already holds files this app did not make ({listed})", fix)
    return p


def _app_entry(p: Path) -> bool:
    """Something the app itself puts in an outputs folder."""
    name = p.name
    try:
        mode = os.lstat(p).st_mode
    except OSError:
        return True                     # gone meanwhile
    if stat.S_ISDIR(mode):
        return bool(DAY_FOLDER.match(name)) or name.endswith(".parts") or name in (".gradio", ".uploads", ".previews")
    if not stat.S_ISREG(mode):
        return False                    # symlinks and special files are never the app's
    return bool(_OWN_FILES.match(name)) or (name.startswith(".") and
                                            (name.endswith((".partial", ".lock")) or name.startswith(".write-test-")))


# ------------------------------------------------------------------------------------------ cleaning up

PARTIAL_MAX_AGE_S = 6 * 3600        # a write in progress renews its file; six hours untouched is a crash
TEMP_MAX_AGE_S = 24 * 3600          # uploads and previews: a day covers any session that still shows them


def clean_stale(outputs_dir: str | os.PathLike, temp_dirs: Iterable[str | os.PathLike] | None = None,
                partial_age_s: float = PARTIAL_MAX_AGE_S, temp_age_s: float = TEMP_MAX_AGE_S,
                now: float | None = None) -> list[Path]:
    """Delete what crashes and uploads leave behind; returns what was deleted.

    - hidden `.*.partial` files (a write that never finished) in the outputs folder, its day folders and
      their `.parts/` folders, untouched for `partial_age_s`;
    - every file in `temp_dirs` (default: `<outputs>/.gradio`, Gradio's upload and preview cache there)
      untouched for `temp_age_s`, then the folders left empty.
    Symlinks are removed as links, never followed; nothing outside these folders is touched."""
    now = time.time() if now is None else now
    root = Path(outputs_dir)
    deleted: list[Path] = []

    def old(p: Path, age: float) -> bool:
        try:
            st = os.lstat(p)
        except OSError:
            return False
        return not stat.S_ISDIR(st.st_mode) and now - st.st_mtime >= age

    folders = [root] + [d for d in _entries(root) if _is_real_dir(d) and DAY_FOLDER.match(d.name)]
    folders += [pd for d in folders[1:] for pd in _entries(d) if _is_real_dir(pd) and pd.name.endswith(".parts")]
    folders += [pd for pd in _entries(root) if _is_real_dir(pd) and pd.name.endswith(".parts")]
    for folder in folders:
        for p in _entries(folder):
            if p.name.startswith(".") and p.name.endswith(".partial") and old(p, partial_age_s):
                _remove(p, deleted)
    for tdir in ([root / ".gradio"] if temp_dirs is None else [Path(t) for t in temp_dirs]):
        if not _is_real_dir(tdir):
            continue
        for dirpath, dirnames, filenames in os.walk(tdir, topdown=False, followlinks=False):
            here = Path(dirpath)
            for name in filenames + [d for d in dirnames if os.path.islink(here / d)]:
                if old(here / name, temp_age_s):
                    _remove(here / name, deleted)
            if here != tdir:
                try:
                    os.rmdir(here)      # only when empty
                except OSError:
                    pass
    return deleted


def _remove(p: Path, deleted: list[Path]) -> None:
    try:
        os.unlink(p)
        deleted.append(p)
    except OSError:
        pass    # in use (Windows) or gone already: the next clean tries again
