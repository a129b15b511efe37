"""List what a models folder holds, cheaply and defensively, before any header is read.

A models folder is often a ComfyUI folder shared with other tools: thousands of LoRAs and SD checkpoints,
symlinks to other drives, and now and then something odd (a dangling or looping symlink, a FIFO, a file
this user may not read). The survey walks it with `os.scandir` and one `stat` per entry, never opens a
file, and turns every odd entry into a problem line of its own instead of an exception that would end
the scan. Its fingerprint (names, sizes, mtimes, inodes) is what the inventory cache compares to know
whether anything changed since the last scan.

Written by hand rather than with `os.walk` because os.walk drops unreadable folders silently (onerror)
and either never follows symlinked folders or follows them into loops.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .headers import file_kind

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".gguf")
# Formats people keep next to Wan files that this app cannot read; said once per file instead of ignored.
UNSUPPORTED_SUFFIXES: dict[str, str] = {}
SHARD = re.compile(r"^(.+)-\d{5}-of-\d{5}\.safetensors$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
_VOCAB_FILES = ("tokenizer.json", "spiece.model")

# Bounds for a folder that links to something huge (`ln -s / models/all`): a real models tree has a few
# levels and at most a few thousand entries; past these the survey stops and says where.
MAX_DEPTH = 12
MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class Entry:
    """One thing the scan will look at: a weight file, a shard set, a tokenizer or diffusers folder, or an
    odd entry that is only reported."""
    kind: str                       # weights | diffusers | tokenizer | odd
    shown: Path                     # what the user sees: the file, the folder, or a shard set's index
    paths: tuple[Path, ...] = ()    # the files to read
    stamp: tuple = ()               # (size, mtime_ns, inode) per path: equal stamps -> same contents
    problem: str | None = None
    vocab_bytes: int = 0            # tokenizer: size of its vocabulary file (tells a tiny test one apart)


@dataclass
class Survey:
    entries: list[Entry] = field(default_factory=list)
    folder_problems: list[str] = field(default_factory=list)

    def fingerprint(self) -> tuple:
        return (tuple((e.kind, str(e.shown), tuple(map(str, e.paths)), e.stamp, e.problem, e.vocab_bytes)
                      for e in self.entries), tuple(self.folder_problems))


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _why(path: Path, e: OSError) -> str:
    if e.errno == errno.ENOENT and os.path.islink(path):
        return f"it is a symlink to {os.readlink(path)}, which does not exist"
    if e.errno == errno.ELOOP:
        return "it is a symlink loop"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return e.strerror or e.__class__.__name__


def survey(dirs: list[Path]) -> Survey:
    out = Survey()
    for root in dirs:
        root = Path(root).expanduser()
        try:
            st = os.stat(root)
        except OSError as e:
            if e.errno == errno.ENOENT and not os.path.islink(root):
                out.folder_problems.append(f"models folder {root} does not exist: create it, or correct the "
                                           "path (Settings, or --models-dir)")
            else:
                out.folder_problems.append(f"models folder {root} cannot be opened: {_why(root, e)}")
            continue
        if stat.S_ISREG(st.st_mode) and root.suffix in WEIGHT_SUFFIXES:
            out.entries.append(Entry("weights", root, (root,), (_stamp(st),)))   # one file given as a folder
        elif not stat.S_ISDIR(st.st_mode):
            what = "a file" if stat.S_ISREG(st.st_mode) else file_kind(st.st_mode)
            out.folder_problems.append(f"models folder {root} is {what}, not a folder: give the folder that "
                                       "holds the model files")
        else:
            _walk(root, out)
    return out


def _walk(root: Path, out: Survey) -> None:
    seen: set[tuple[int, int]] = set()        # (device, inode) of every folder entered: symlink loops end here
    stack: list[tuple[Path, int]] = [(root, 0)]
    count = 0
    while stack:
        here, depth = stack.pop()
        try:
            st = os.stat(here)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            with os.scandir(here) as it:
                names = sorted(it, key=lambda d: d.name)
        except OSError as e:
            out.folder_problems.append(f"folder {here} cannot be listed: {_why(here, e)}")
            continue
        count += len(names)
        if count > MAX_ENTRIES:
            out.folder_problems.append(f"stopped in {here}: more than {MAX_ENTRIES:,} entries under {root} "
                                       "(does a symlink point at a whole disk?)")
            return
        files: dict[str, os.stat_result | OSError] = {}
        subdirs: list[Path] = []
        for d in names:
            try:
                dst = d.stat()                    # follows symlinks: a linked file or folder counts as itself
            except OSError as e:
                files[d.name] = e
                continue
            if stat.S_ISDIR(dst.st_mode):
                if not d.name.startswith("."):
                    subdirs.append(here / d.name)
            else:
                files[d.name] = dst
        _folder(here, files, out)
        if subdirs and depth + 1 > MAX_DEPTH:
            out.folder_problems.append(f"did not look inside {here}: more than {MAX_DEPTH} folder levels below {root}")
            continue
        stack.extend((p, depth + 1) for p in reversed(subdirs))


def _regular(files: dict, name: str) -> os.stat_result | None:
    st = files.get(name)
    return st if isinstance(st, os.stat_result) and stat.S_ISREG(st.st_mode) else None


def _odd(here: Path, name: str, st) -> str:
    if isinstance(st, OSError):
        return f"{here / name} cannot be read: {_why(here / name, st)}"
    return f"{here / name} is {file_kind(st.st_mode)}, not a weight file"


def _folder(here: Path, files: dict, out: Survey) -> None:
    if "model_index.json" in files:
        if _regular(files, "model_index.json"):
            out.entries.append(Entry("diffusers", here, (), (_stamp(files["model_index.json"]),)))
        else:
            out.entries.append(Entry("odd", here / "model_index.json",
                                     problem=_odd(here, "model_index.json", files["model_index.json"])))
    toks = [n for n in TOKENIZER_FILES if n in files]
    if toks:
        bad = [n for n in toks if not _regular(files, n) or not os.access(here / n, os.R_OK)]
        if bad:
            # transformers would block on a FIFO tokenizer.json or fail late on an unreadable one
            out.entries.append(Entry("tokenizer", here, problem=f"tokenizer folder {here} cannot be used: "
                                     + "; ".join(_odd(here, n, files[n]) if not _regular(files, n)
                                                 else f"{here / n} cannot be read: permission denied" for n in bad)))
        else:
            vocab = max((files[n].st_size for n in _VOCAB_FILES if n in files), default=0)
            out.entries.append(Entry("tokenizer", here, stamp=tuple(_stamp(files[n]) for n in toks), vocab_bytes=vocab))
    shards: dict[str, list[str]] = {}
    for name, st in files.items():
        if name.startswith("."):
            continue                               # hidden: partial downloads, editors' temp files
        suffix = os.path.splitext(name)[1].lower()
        if suffix in UNSUPPORTED_SUFFIXES:
            out.entries.append(Entry("odd", here / name, problem=f"{here / name}: {UNSUPPORTED_SUFFIXES[suffix]}"))
            continue
        if not name.endswith(WEIGHT_SUFFIXES):
            continue
        if not _regular(files, name):
            out.entries.append(Entry("odd", here / name, problem=_odd(here, name, st)))
        elif m := SHARD.match(name):
            shards.setdefault(m.group(1), []).append(name)
        else:
            out.entries.append(Entry("weights", here / name, (here / name,), (_stamp(st),)))
    for stem, parts in shards.items():
        index = f"{stem}.safetensors.index.json"
        shown = here / index if _regular(files, index) else here / parts[0]
        out.entries.append(Entry("weights", shown, tuple(here / n for n in parts),
                                 tuple(_stamp(files[n]) for n in parts)))
