"""Persisted settings (model folders, outputs folder, overrides, the last request), validated on load.

A settings file is edited by hand sometimes and written by older versions of the app, so loading never
crashes: a file that is not JSON, or has values that are wrong, is moved aside (nothing the user wrote is
lost), the wrong values fall back to their defaults, and a notice says what happened and where the old file
went. Unknown keys are dropped with a notice and the rest is kept.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
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

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _choice(allowed):
    def check(v):
        return None if v in allowed else f"{v!r} is not one of {', '.join(map(str, allowed))}"
    return check


def _bool(v):
    return None if isinstance(v, bool) else f"{v!r} is not true/false"


def _non_negative_int(v):
    return None if _is_int(v) and v >= 0 else f"{v!r} is not a whole number >= 0"


_OVERRIDE_CHECKS = {
    "blocks_swapped": _non_negative_int,
    "weight_dtype": _choice(plan_types.DTYPES),
    "text_encoder": _choice(plan_types.TEXT_ENCODER_PLACES),
    "attention": _choice(plan_types.ATTENTION_BACKENDS),
    "vae_tiling": _bool,
    "experts_resident": _choice(EXPERTS_RESIDENT),
}
assert set(_OVERRIDE_CHECKS) == {f.name for f in fields(Overrides)}, "a new Overrides field needs a check"


def _opt(check):
    return lambda v: None if v is None else check(v)


def _type(kind, name):
    return lambda v: None if kind(v) else f"{v!r} is not {name}"


def _positive_int(v):
    return None if _is_int(v) and v > 0 else f"{v!r} is not a whole number > 0"


def _seed(v):
    return None if _is_int(v) and -1 <= v <= MAX_SEED else f"{v!r} is not a seed (-1 to {MAX_SEED})"


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
}
assert set(_REQUEST_CHECKS) == {f.name for f in fields(Request)}, "a new Request field needs a check"


def _check_dict_of(section: str, value, checks: dict, out: dict, problems: list[Problem]) -> None:
    if not isinstance(value, dict):
        problems.append(Problem(section, f"{type(value).__name__} is not a mapping of settings"))
        return
    for k, v in value.items():
        if k not in checks:
            problems.append(Problem(f"{section}.{k}", "unknown setting, dropped", unknown_key=True))
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
                problems.append(Problem(key, f"{value!r} is not a non-empty list of folder names"))
        elif key == "outputs_dir":
            if isinstance(value, str) and value.strip():
                s.outputs_dir = value
            else:
                problems.append(Problem(key, f"{value!r} is not a folder name"))
        elif key == "default_model":
            if value is None or value in catalog.MODELS:
                s.default_model = value
            else:
                problems.append(Problem(key, f"unknown model {value!r} (known: {', '.join(catalog.MODELS)})"))
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
            problems.append(Problem(key, "unknown setting, dropped", unknown_key=True))
    return s, problems


# ------------------------------------------------------------------------------------------ files

def load_settings(path: str | os.PathLike) -> tuple[Settings, str | None]:
    """(settings, notice). Missing file: defaults, no notice. Never raises for what the file contains."""
    path = Path(path)
    if path.is_dir():   # not a settings file at all: leave it where it is
        return Settings(), f"{path} is a folder, not a settings file; defaults are used."
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings(), None
    except (OSError, UnicodeDecodeError) as e:
        return _set_aside(path, Settings(), [f"it could not be read ({e.__class__.__name__}: {e})"])
    try:
        data = json.loads(text)
    except ValueError as e:
        return _set_aside(path, Settings(), [f"it is not valid JSON ({e})"])
    settings, problems = validate(data)
    errors = [str(p) for p in problems if not p.unknown_key]
    dropped = [p.field for p in problems if p.unknown_key]
    if errors:
        settings, notice = _set_aside(path, settings, errors)
    else:
        notice = None
    if dropped:
        extra = f"Unknown settings in {path} were ignored: {', '.join(dropped)}."
        notice = f"{notice} {extra}" if notice else extra
    return settings, notice


def _set_aside(path: Path, settings: Settings, what: list[str]) -> tuple[Settings, str]:
    """Move the broken file to `<name>.broken-<timestamp>.json` and write the repaired settings in its
    place, so the next start is clean and nothing the user wrote is lost."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.stem}.broken-{stamp}.json")
    n = 2
    while backup.exists():
        backup = path.with_name(f"{path.stem}.broken-{stamp}-{n}.json")
        n += 1
    notice = f"Settings file {path} had problems: " + "; ".join(what) + ". "
    try:
        os.replace(path, backup)
        notice += f"It was moved to {backup}; defaults are used for the values that were wrong."
    except OSError as e:
        return settings, notice + f"It could not be moved aside ({e}); defaults are used for now."
    try:
        save_settings(settings, path)
    except (OSError, UserError):
        pass   # the settings still apply for this run; the next save tries again
    return settings, notice


def save_settings(settings: Settings, path: str | os.PathLike) -> None:
    """Write atomically. Invalid values raise UserError naming the field, so nothing broken is saved."""
    checked, problems = validate(asdict(settings))
    bad = [p for p in problems if not p.unknown_key]
    if bad:
        raise UserError(bad[0].field, bad[0].message, "correct it before saving")
    write_text_atomic(path, json.dumps(checked.to_dict(), ensure_ascii=False, indent=2) + "\n")
