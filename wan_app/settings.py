"""Persisted settings (model folders, outputs folder, overrides, the last request), validated on load.

A settings file is edited by hand sometimes, written by older versions of the app, and sometimes the wrong
file altogether (`--settings notes.txt`). So:
- it is read once, at start, and not changed then: wrong values fall back to their defaults with a
  notice naming each field; the file stays as it is, and a copy of it is kept beside it as
  `<name>.broken-<time>.json`, since the next save cannot keep what is wrong in it;
- it is written only by `save_settings`, atomically, merged with what is on disk now: a field the app did
  not change keeps the value on disk, so editing the file while the app runs is not undone by a save;
- a save that cannot keep something in the file (a damaged file, a wrong value) keeps such a copy first
  if there is none of the file as it is now, so nothing the user wrote is lost;
- a path that holds something else (not JSON, JSON without any settings key, a folder) is refused with
  a UserError, never renamed or replaced.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import reprlib
import shutil
import stat
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import catalog, plan_types
from .errors import UserError
from .media import write_text_atomic
from .plan_types import Overrides
from .request import MAX_SEED, Request

# Overrides.experts_resident has no constant in plan_types; these are the two values its comment names.
EXPERTS_RESIDENT = ("both", "one")


@dataclass
class Settings:
    models_dirs: list[str] = field(default_factory=lambda: ["models"])
    outputs_dir: str = "outputs"
    default_model: str | None = None
    overrides: dict = field(default_factory=dict)      # fields of plan_types.Overrides; absent = auto
    last_request: dict = field(default_factory=dict)   # fields of request.Request, may be empty

    def to_dict(self) -> dict:
        return asdict(self)

    def overrides_obj(self) -> Overrides:
        return Overrides(**self.overrides)


@dataclass(frozen=True)
class Problem:
    field: str
    message: str
    unknown_key: bool = False    # a key this version does not know (dropped, not an error)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# ------------------------------------------------------------------------------------------ validation

# Values are quoted in messages; a hand-edited file can hold a 100-level list or a megabyte string.
_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict = 2, 60, 60, 4, 4


def _short(v) -> str:
    return _repr.repr(v)


def _name(k) -> str:
    """A key as a field name in a message: as written, but never a page long."""
    return k[:60] if isinstance(k, str) else _short(k)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _choice(allowed):
    def check(v):
        return None if _hashable(v) and v in allowed else f"{_short(v)} is not one of {', '.join(map(str, allowed))}"
    return check


def _hashable(v) -> bool:
    return isinstance(v, (str, int, float, bool, type(None)))


def _bool(v):
    return None if isinstance(v, bool) else f"{_short(v)} is not true/false"


def _non_negative_int(v):
    return None if _is_int(v) and v >= 0 else f"{_short(v)} is not a whole number >= 0"


_OVERRIDE_CHECKS = {
    "blocks_swapped": _non_negative_int,
    "weight_dtype": _choice(plan_types.DTYPES),
    "text_encoder": _choice(plan_types.TEXT_ENCODER_PLACES),
    "attention": _choice(plan_types.ATTENTION_BACKENDS),
    "vae_tiling": _bool,
    "experts_resident": _choice(EXPERTS_RESIDENT),
    "compile": _bool,
}
assert set(_OVERRIDE_CHECKS) == {f.name for f in fields(Overrides)}, "a new Overrides field needs a check"


def _opt(check):
    return lambda v: None if v is None else check(v)


def _type(kind, name):
    return lambda v: None if kind(v) else f"{_short(v)} is not {name}"


def _positive_int(v):
    return None if _is_int(v) and v > 0 else f"{_short(v)} is not a whole number > 0"


def _seed(v):
    return None if _is_int(v) and -1 <= v <= MAX_SEED else f"{_short(v)} is not a seed (-1 to {MAX_SEED})"


# Types only: ranges that depend on the model (size multiples, 4n+1 frames) are request.resolve()'s job
# when the request is actually run, so a saved request that is merely unusual still loads.
_REQUEST_CHECKS = {
    "model": _choice(tuple(catalog.MODELS)),
    "prompt": _type(lambda v: isinstance(v, str), "text"),
    "negative_prompt": _opt(_type(lambda v: isinstance(v, str), "text")),
    "width": _opt(_positive_int), "height": _opt(_positive_int), "frames": _opt(_positive_int),
    "steps": _opt(_positive_int), "fps": _opt(_positive_int),
    "shift": _opt(_type(_is_number, "a number")), "guidance": _opt(_type(_is_number, "a number")),
    "guidance_2": _opt(_type(_is_number, "a number")), "boundary": _opt(_type(_is_number, "a number")),
    "solver": _choice(catalog.SOLVERS),
    "seed": _opt(_seed),
    "loras": _type(lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v), "a list of LoRAs"),
    "image": _opt(_type(lambda v: isinstance(v, str), "a path")),
    "last_image": _opt(_type(lambda v: isinstance(v, str), "a path")),
    "cache": _choice(("off", "magcache", "teacache")),
    "cache_threshold": _opt(_type(_is_number, "a number")),
}
assert set(_REQUEST_CHECKS) == {f.name for f in fields(Request)}, "a new Request field needs a check"


def _check_dict_of(section: str, value, checks: dict, out: dict, problems: list[Problem]) -> None:
    if not isinstance(value, dict):
        problems.append(Problem(section, f"{type(value).__name__} is not a mapping of settings"))
        return
    for k, v in value.items():
        if k not in checks:
            problems.append(Problem(f"{section}.{_name(k)}", "unknown setting, dropped", unknown_key=True))
            continue
        if section == "overrides" and v is None:
            continue   # None means "let the planner decide", the same as leaving it out
        msg = checks[k](v)
        if msg:
            problems.append(Problem(f"{section}.{k}", msg))
        else:
            out[k] = v


def validate(data: dict) -> tuple[Settings, list[Problem]]:
    """Settings from a plain dict: every valid value kept, every invalid one replaced by its default and
    reported as a Problem naming its field. Unknown keys are reported with `unknown_key=True`."""
    s = Settings()
    problems: list[Problem] = []
    if not isinstance(data, dict):
        return s, [Problem("settings", f"the file holds a {type(data).__name__}, not a mapping of settings")]
    for key, value in data.items():
        if key == "models_dirs":
            if isinstance(value, list) and value and all(isinstance(d, str) and d.strip() for d in value):
                s.models_dirs = list(value)
            else:
                problems.append(Problem(key, f"{_short(value)} is not a non-empty list of folder names"))
        elif key == "outputs_dir":
            if isinstance(value, str) and value.strip():
                s.outputs_dir = value
            else:
                problems.append(Problem(key, f"{_short(value)} is not a folder name"))
        elif key == "default_model":
            if value is None or (isinstance(value, str) and value in catalog.MODELS):
                s.default_model = value
            else:
                problems.append(Problem(key, f"unknown model {_short(value)} (known: {', '.join(catalog.MODELS)})"))
        elif key == "overrides":
            ov: dict = {}
            _check_dict_of(key, value, _OVERRIDE_CHECKS, ov, problems)
            s.overrides = ov
        elif key == "last_request":
            req: dict = {}
            _check_dict_of(key, value, _REQUEST_CHECKS, req, problems)
            # a request without its model or prompt cannot be restored meaningfully: keep none of it
            s.last_request = req if req and {"model", "prompt"} <= req.keys() else {}
            if req and not s.last_request:
                problems.append(Problem(key, "has no valid model and prompt, dropped"))
        else:
            problems.append(Problem(_name(key), "unknown setting, dropped", unknown_key=True))
    return s, problems


# ------------------------------------------------------------------------------------------ files

KNOWN_KEYS = frozenset(f.name for f in fields(Settings))
# Real settings files are a few KB (the last request's prompt is the longest part) and 3 levels deep.
MAX_SETTINGS_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 32

_NOT_SETTINGS_FIX = "give --settings the app's settings file (or a new file name); this file was left as it is"


@dataclass
class _OnDisk:
    kind: str                   # "none" (missing or empty) | "settings" | "damaged"
    data: dict | None = None    # the parsed file ("settings")
    why: str = ""               # what is wrong with a damaged file


def _read(path: Path) -> _OnDisk:
    """What is at `path`. A damaged file that is meant to be settings (a `.json` name) is "damaged";
    anything that is not a settings file raises UserError, so it is neither used nor overwritten."""
    def not_settings(why: str) -> UserError:
        return UserError("settings", f"{path} is not a settings file of this app ({why})", _NOT_SETTINGS_FIX)

    def damaged_or_refused(why: str) -> _OnDisk:
        if path.suffix.lower() != ".json":
            raise not_settings(why)
        return _OnDisk("damaged", why=why)

    try:
        st = os.stat(path)          # before any open: a FIFO would block, a folder cannot be read
    except FileNotFoundError:
        return _OnDisk("none")
    except OSError as e:
        raise UserError("settings", f"{path} cannot be read ({e.strerror or type(e).__name__})",
                        "fix its permissions or give --settings another file") from None
    if not stat.S_ISREG(st.st_mode):
        raise not_settings("it is a folder" if stat.S_ISDIR(st.st_mode) else "it is not a regular file")
    if st.st_size > MAX_SETTINGS_BYTES:
        return damaged_or_refused(f"it is {st.st_size:,} bytes; settings files are a few KB")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SETTINGS_BYTES + 1)
    except OSError as e:
        raise UserError("settings", f"{path} cannot be read ({e.strerror or type(e).__name__})",
                        "fix its permissions or give --settings another file") from None
    try:
        text = raw.decode("utf-8-sig")          # a BOM from Windows editors is not a reason to refuse
    except UnicodeDecodeError:
        return damaged_or_refused("it is not UTF-8 text")
    if not text.strip():
        return _OnDisk("none")
    try:
        data = json.loads(text)
    except RecursionError:
        return damaged_or_refused("it is nested too deeply")
    except ValueError as e:
        return damaged_or_refused(f"it is not valid JSON ({e})")
    if _depth(data) > MAX_DEPTH:
        return damaged_or_refused(f"it is nested more than {MAX_DEPTH} levels deep")
    if not isinstance(data, dict):
        raise not_settings(f"it holds a JSON {type(data).__name__}, not a mapping of settings")
    if data and not KNOWN_KEYS & data.keys():
        raise not_settings("it has none of the settings keys: " + ", ".join(sorted(KNOWN_KEYS)))
    return _OnDisk("settings", data=data)


def _depth(data) -> int:
    """Nesting depth, counted without recursion (the data may be as deep as json.loads allows)."""
    deepest, todo = 0, [(data, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            todo.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


# What each settings file held when it was loaded (or last saved), as validated fields: a save writes
# the fields that differ from this and keeps the others as they are on disk now.
_BASELINES: dict[str, dict] = {}
# (size, mtime_ns) of each settings file at the moment a copy of it was kept, so one state is kept once
_COPIED: dict[str, tuple[int, int]] = {}
_BASELINES_LOCK = threading.Lock()


def _key(path: Path) -> str:
    return str(Path(path).expanduser().resolve())


def load_settings(path: str | os.PathLike) -> tuple[Settings, str | None]:
    """(settings, notice). Reads the file once and never writes it. Missing or empty file: defaults, no
    notice. Wrong values or a damaged `.json` file: defaults for what is wrong, and a notice. A path that
    is not a settings file: UserError("settings")."""
    path = Path(path)
    disk = _read(path)
    notice = None
    if disk.kind == "damaged":
        settings = Settings()
        notice = f"Settings file {path} is damaged ({disk.why}); defaults are used. " + _copy_note(path)
    elif disk.kind == "none":
        settings = Settings()
    else:
        settings, problems = validate(disk.data)
        errors = [str(p) for p in problems if not p.unknown_key]
        dropped = [p.field for p in problems if p.unknown_key]
        if errors:
            notice = (f"Settings file {path} had problems: " + "; ".join(errors) + ". Defaults are used for "
                      "those values. " + _copy_note(path))
        if dropped:
            extra = f"Unknown settings in {path} were ignored: {', '.join(dropped)}."
            notice = f"{notice} {extra}" if notice else extra
    with _BASELINES_LOCK:
        _BASELINES[_key(path)] = settings.to_dict()
    return settings, notice


def save_settings(settings: Settings, path: str | os.PathLike, only: tuple[str, ...] | None = None) -> None:
    """Write atomically, merged with the file as it is now. Invalid values raise UserError naming the
    field, so nothing broken is saved; a path that is not a settings file raises UserError("settings").

    Fields written: those in `only` if given (e.g. ("last_request",) after a run), else those that differ
    from what this file held when it was loaded or last saved (all of them for a file never loaded). The
    other fields keep their value on disk, and keys this version does not know are kept. If the write would
    lose anything else the file holds (a damaged file, a wrong value), a copy of the file is kept first."""
    path = Path(path)
    checked, problems = validate(asdict(settings))
    bad = [p for p in problems if not p.unknown_key]
    if bad:
        raise UserError(bad[0].field, bad[0].message, "correct it before saving")
    mine = checked.to_dict()
    disk = _read(path)
    with _BASELINES_LOCK:
        base = _BASELINES.get(_key(path))
    if only is not None:
        unknown = set(only) - KNOWN_KEYS
        if unknown:
            raise ValueError(f"save_settings: unknown fields {sorted(unknown)}")
        changed = set(only)
    elif base is None:
        changed = set(KNOWN_KEYS)
    else:
        changed = {k for k in KNOWN_KEYS if mine[k] != base.get(k)}
    current = validate(disk.data)[0].to_dict() if disk.kind == "settings" else Settings().to_dict()
    merged = {k: (mine[k] if k in changed else current[k]) for k in KNOWN_KEYS}
    if disk.kind == "settings":
        # keys this version does not know (a newer version's) stay as they are
        merged.update({k: v for k, v in disk.data.items() if k not in KNOWN_KEYS})
    lost = disk.kind == "damaged" or (disk.kind == "settings" and any(
        k in KNOWN_KEYS and k not in changed and merged[k] != v for k, v in disk.data.items()))
    if lost and not _copied_as_is(path):
        _keep_copy(path)
    write_text_atomic(path, json.dumps(merged, ensure_ascii=False, indent=2) + "\n")
    with _BASELINES_LOCK:
        _BASELINES[_key(path)] = {k: merged[k] for k in KNOWN_KEYS}


def _copy_note(path: Path) -> str:
    try:
        backup = _keep_copy(path)
    except OSError as e:
        return f"The file is left as it is (a copy could not be kept: {e.strerror or type(e).__name__})."
    return f"The file is left as it is, and a copy of it was kept as {backup}."


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None


def _copied_as_is(path: Path) -> bool:
    now = _signature(path)
    with _BASELINES_LOCK:
        return now is not None and _COPIED.get(_key(path)) == now


def _keep_copy(path: Path) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.stem}.broken-{stamp}.json")
    n = 2
    while backup.exists():
        backup = path.with_name(f"{path.stem}.broken-{stamp}-{n}.json")
        n += 1
    sig = _signature(path)
    shutil.copy2(path, backup)       # byte for byte, as it is now (it may have been edited since it was read)
    with _BASELINES_LOCK:
        _COPIED[_key(path)] = sig
    return backup
