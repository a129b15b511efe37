"""A generation request: what the user asked for, with the model's official defaults filled in.

`resolve()` is the one place input is checked, so the CLI, the UI and tests get the same messages,
before anything heavy is loaded.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields, replace

from . import catalog
from .catalog import DEFAULT_NEGATIVE_PROMPT, SOLVERS, ModelSpec
from .errors import UserError

MAX_SEED = 2**32 - 1


@dataclass
class Request:
    model: str
    prompt: str
    negative_prompt: str | None = None   # None -> the official default
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    steps: int | None = None
    shift: float | None = None
    guidance: float | None = None
    guidance_2: float | None = None      # A14B low-noise expert
    boundary: float | None = None        # A14B
    solver: str = "unipc"
    seed: int | None = None              # None -> random, reported in the result
    fps: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Request":
        """Build from saved metadata; unknown keys are ignored so old files keep loading."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().replace(" ", "").split("x")
        return int(w), int(h)
    except ValueError:
        raise UserError("size", f"'{text}' is not WIDTHxHEIGHT", "write it like 832x480") from None


def resolve(req: Request, max_frames: int | None = None) -> tuple[Request, ModelSpec]:
    """Fill defaults from the model spec and check every field. Returns a complete request."""
    spec = catalog.get(req.model)
    r = replace(req)
    if not (r.prompt or "").strip():
        raise UserError("prompt", "is empty", "describe the video you want")
    if r.negative_prompt is None:
        r.negative_prompt = DEFAULT_NEGATIVE_PROMPT
    if r.width is None or r.height is None:
        r.width, r.height = spec.default_size
    m = spec.size_multiple
    for name, v in (("width", r.width), ("height", r.height)):
        if not isinstance(v, int) or v <= 0 or v % m:
            raise UserError("size", f"{name} {v} is not a positive multiple of {m}",
                            f"{spec.name} needs sizes in steps of {m}, e.g. "
                            f"{spec.default_size[0]}x{spec.default_size[1]}")
    r.frames = spec.frames if r.frames is None else r.frames
    if not isinstance(r.frames, int) or r.frames < 1 or (r.frames - 1) % 4:
        lo = max(1, ((r.frames or 1) - 1) // 4 * 4 + 1)
        raise UserError("frames", f"{r.frames} is not of the form 4n+1",
                        f"use {lo} or {lo + 4} (the VAE packs 4 frames per latent frame after the first)")
    if max_frames is not None and r.frames > max_frames:
        raise UserError("frames", f"{r.frames} frames at {r.width}x{r.height} do not fit this machine",
                        f"at most {max_frames} here; use Extend for longer videos")
    r.steps = spec.steps if r.steps is None else r.steps
    if not isinstance(r.steps, int) or not 1 <= r.steps <= 1000:
        raise UserError("steps", f"{r.steps} is out of range", "use 1 to 1000 (official: "
                        f"{spec.steps})")
    r.shift = spec.shift if r.shift is None else float(r.shift)
    if not 0 < r.shift <= 100:
        raise UserError("shift", f"{r.shift} is out of range", "use a value in (0, 100]")
    r.guidance = spec.guidance if r.guidance is None else float(r.guidance)
    if spec.experts == 2:
        r.guidance_2 = spec.guidance_2 if r.guidance_2 is None else float(r.guidance_2)
        r.boundary = spec.boundary if r.boundary is None else float(r.boundary)
        if not 0 < r.boundary < 1:
            raise UserError("boundary", f"{r.boundary} is out of range",
                            f"use a value between 0 and 1 (official: {spec.boundary})")
    else:
        r.guidance_2 = r.boundary = None
    for name, g in (("guidance", r.guidance), ("guidance_2", r.guidance_2)):
        if g is not None and not 0 <= g <= 30:
            raise UserError(name, f"{g} is out of range", "use a CFG scale between 0 and 30")
    if r.solver not in SOLVERS:
        raise UserError("solver", f"unknown solver '{r.solver}'", "choose one of: " + ", ".join(SOLVERS))
    if r.seed is None or r.seed < 0:
        r.seed = random.randint(0, MAX_SEED)
    if r.seed > MAX_SEED:
        raise UserError("seed", f"{r.seed} is too large", f"use 0 to {MAX_SEED}, or -1 for random")
    r.fps = spec.fps if r.fps is None else int(r.fps)
    if not 1 <= r.fps <= 120:
        raise UserError("fps", f"{r.fps} is out of range", "use 1 to 120")
    return r, spec
