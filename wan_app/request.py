"""A generation request: what the user asked for, with the model's official defaults filled in.

`resolve()` is the one place input is checked, so the CLI, the UI and tests get the same messages,
before anything heavy is loaded.
"""
from __future__ import annotations

import functools
import math
import random
import struct
from dataclasses import asdict, dataclass, field, fields, replace

from . import catalog
from .catalog import SOLVERS, ModelSpec
from .errors import UserError
from .sizes import MAX_FRAMES_CONSIDERED

MAX_SEED = 2**32 - 1

# The text encoder reads the first 512 tokens of a prompt (catalog text_len, the official Wan configs):
# about 2,000 characters of English, fewer of Chinese. 20,000 characters is ten times what any script fits
# in 512 tokens, so a longer prompt is a paste gone wrong; refusing it also keeps the metadata in every
# video, the settings file and the gallery small.
MAX_PROMPT_CHARS = 20_000

# One clip: the planner considers up to this many frames (sizes.MAX_FRAMES_CONSIDERED; Wan's RoPE has 1024
# temporal positions, i.e. 4093 frames, and attention time is hours long before either). Longer videos
# are made window by window (Extend), each window a clip.
MAX_CLIP_FRAMES = MAX_FRAMES_CONSIDERED
# A long video's total: about 17 hours at 16 fps. A sanity bound, so that a typo (2**62) is refused at
# once instead of planning billions of windows.
MAX_LONG_FRAMES = 1_000_000

# Wan's RoPE (diffusers WanRotaryPosEmbed, rope_max_seq_len=1024) has 1024 positions per axis; one
# position is one 2x2 patch of latents, so a side may be at most 1024 * 2 * the VAE's spatial stride.
ROPE_POSITIONS = 1024

# Steps: the schedulers have 1000 training timesteps (sampling.NUM_TRAIN_TIMESTEPS); beyond that every
# solver repeats timesteps.
MAX_STEPS = 1000


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
    # LoRAs: [{"file": path or name under a loras/ folder, "strength": s, "strength_low": s or None}]
    loras: list = field(default_factory=list)
    image: str | None = None             # I2V / TI2V: the first frame (a path); FLF2V: and the last frame
    last_image: str | None = None
    cache: str = "off"                   # step cache: off / magcache / teacache (wan_app.stepcache)
    cache_threshold: float | None = None  # None: the published default for the model

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


def resolve(req: Request, max_frames: int | None = None, image_from_video: bool = False) -> tuple[Request, ModelSpec]:
    """Fill defaults from the model spec and check every field. Returns a complete request.
    `image_from_video`: Extend gives an image model the frames it continues instead of an image."""
    if not isinstance(req.model, str):
        raise UserError("model", f"{_show(req.model)} is not a model id", "choose one of: " + ", ".join(catalog.MODELS))
    spec = catalog.get(req.model)
    r = replace(req)
    for name in ("prompt", "negative_prompt"):
        v = getattr(r, name)
        if v is not None and not isinstance(v, str):
            raise UserError(name, f"{_show(v)} is not text", "write the prompt as text")
        if v is not None and len(v) > MAX_PROMPT_CHARS:
            raise UserError(name, f"is {len(v):,} characters long",
                            f"use at most {MAX_PROMPT_CHARS:,}: the text encoder reads only the first "
                            f"{spec.text_len} tokens (about 2,000 characters of English)")
    if not (r.prompt or "").strip():
        raise UserError("prompt", "is empty", "describe the video you want")
    if r.negative_prompt is None:
        r.negative_prompt = spec.negative_prompt
    _check_images(r, spec, image_from_video)
    if r.width is None or r.height is None:
        r.width, r.height = spec.default_size
    m = spec.size_multiple
    side_max = ROPE_POSITIONS * 2 * spec.vae_stride[1]
    for name, v in (("width", r.width), ("height", r.height)):
        if not _is_int(v) or v <= 0 or v % m:
            raise UserError("size", f"{name} {_show(v)} is not a positive multiple of {m}",
                            f"{spec.name} needs sizes in steps of {m}, e.g. "
                            f"{spec.default_size[0]}x{spec.default_size[1]}")
        if v > side_max:
            raise UserError("size", f"{name} {v} is larger than the {side_max} that {spec.name}'s position "
                            "encoding covers", f"use at most {side_max} (trained: {spec.default_size[0]}x"
                            f"{spec.default_size[1]})")
    r.frames = spec.frames if r.frames is None else r.frames
    if not _is_int(r.frames) or r.frames < 1 or (r.frames - 1) % 4:
        lo = max(1, ((r.frames if _is_int(r.frames) else 1) - 1) // 4 * 4 + 1)
        raise UserError("frames", f"{_show(r.frames)} is not of the form 4n+1",
                        f"use {lo} or {lo + 4} (the VAE packs 4 frames per latent frame after the first)")
    if r.frames > MAX_CLIP_FRAMES:
        raise UserError("frames", f"{r.frames:,} frames are more than one clip can hold",
                        f"use 1 to {MAX_CLIP_FRAMES} (4n+1) for one clip; longer videos are made window by "
                        "window (Extend, or generate without --no-windows)")
    if max_frames is not None and r.frames > max_frames:
        raise UserError("frames", f"{r.frames} frames at {r.width}x{r.height} do not fit this machine",
                        f"at most {max_frames} here; use Extend for longer videos")
    r.shift = spec.shift if r.shift is None else _number("shift", r.shift)
    if not 0 < r.shift <= 100:
        raise UserError("shift", f"{r.shift} is out of range", "use a value in (0, 100]")
    if not isinstance(r.solver, str) or r.solver not in SOLVERS:
        raise UserError("solver", f"unknown solver {_show(r.solver)}", "choose one of: " + ", ".join(SOLVERS))
    r.steps = spec.steps if r.steps is None else r.steps
    top = max_steps(r.solver, r.shift)
    if not _is_int(r.steps) or not 1 <= r.steps <= top:
        why = "" if top == MAX_STEPS else (f"; with shift {r.shift:g}, UniPC repeats its first timestep above "
                                           f"{top} steps and fails")
        raise UserError("steps", f"{_show(r.steps)} is out of range for {r.solver}",
                        f"use 1 to {top} (official: {spec.steps}){why}")
    r.guidance = spec.guidance if r.guidance is None else _number("guidance", r.guidance)
    if spec.experts == 2:
        r.guidance_2 = spec.guidance_2 if r.guidance_2 is None else _number("guidance_2", r.guidance_2)
        r.boundary = spec.boundary if r.boundary is None else _number("boundary", r.boundary)
        if not 0 < r.boundary < 1:
            raise UserError("boundary", f"{r.boundary} is out of range",
                            f"use a value between 0 and 1 (official: {spec.boundary})")
    else:
        r.guidance_2 = r.boundary = None
    for name, g in (("guidance", r.guidance), ("guidance_2", r.guidance_2)):
        if g is not None and not 0 <= g <= 30:
            raise UserError(name, f"{g} is out of range", "use a CFG scale between 0 and 30")
    if r.seed is not None and not _is_int(r.seed):
        raise UserError("seed", f"{_show(r.seed)} is not a whole number", f"use 0 to {MAX_SEED}, or -1 for random")
    if r.seed is None or r.seed < 0:
        r.seed = random.randint(0, MAX_SEED)
    if r.seed > MAX_SEED:
        raise UserError("seed", f"{r.seed} is too large", f"use 0 to {MAX_SEED}, or -1 for random")
    if r.fps is None:
        r.fps = spec.fps
    elif _is_int(r.fps) or (isinstance(r.fps, float) and r.fps.is_integer()):
        r.fps = int(r.fps)
    else:
        raise UserError("fps", f"{_show(r.fps)} is not a whole number", "use 1 to 120")
    if not 1 <= r.fps <= 120:
        raise UserError("fps", f"{r.fps} is out of range", "use 1 to 120")
    r.loras = _check_loras(r.loras)
    from . import stepcache
    r.cache = stepcache.check(r.cache, spec, r.cache_threshold)
    return r, spec


def _check_images(r: Request, spec: ModelSpec, image_from_video: bool) -> None:
    """Which images the model takes, each readable (named by its field); with an image and no size, the
    official size rule: the model's default area at the image's aspect ratio."""
    from . import i2v
    for name in ("image", "last_image"):
        v = getattr(r, name)
        if v is not None and not isinstance(v, str):
            raise UserError(name, f"{_show(v)} is not a path to an image", "give the image file's path")
    if image_from_video and r.image is None:
        if spec.image_input == "none" and r.last_image is None:
            return
        i2v.check_inputs(spec, "video", r.last_image)
    else:
        i2v.check_inputs(spec, r.image, r.last_image)
    if r.image is None:
        return
    w, h = i2v.check_image(r.image, "image")
    if r.last_image is not None:
        i2v.check_last_image((w, h), i2v.check_image(r.last_image, "last_image"))
    if r.width is None or r.height is None:
        r.width, r.height = i2v.output_size(spec, w, h)


def _check_loras(entries) -> list:
    """Each LoRA entry well-formed, strengths numbers in range (wan_app.lora.check_strength); the files
    are found and checked against the model by the pipeline, from their headers, before loading."""
    from .lora import check_strength
    if not isinstance(entries, (list, tuple)):
        raise UserError("loras", f"{_show(entries)} is not a list", "give a list of {file, strength}")
    out = []
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("file"), str) or not e["file"].strip():
            raise UserError("loras", f"{_show(e)} does not name a LoRA file", 'use {"file": NAME, "strength": 1.0}')
        low = e.get("strength_low")
        out.append({"file": e["file"], "strength": check_strength(e.get("strength", 1.0), "lora strength"),
                    "strength_low": None if low is None else check_strength(low, "lora low-noise strength")})
    return out


def check_total_frames(total, field: str = "frames") -> int:
    """A long video's total frame count, refused at once when it is not a sane positive number (a typo
    such as 2**62 would otherwise plan billions of windows). Returns it."""
    if not _is_int(total) or total < 1:
        raise UserError(field, f"{_show(total)} is not a positive whole number of frames", "ask for at least 1 frame")
    if total > MAX_LONG_FRAMES:
        raise UserError(field, f"{total:,} frames is more than this app makes in one video",
                        f"use at most {MAX_LONG_FRAMES:,} (about 17 hours at 16 fps)")
    return total


@functools.lru_cache(maxsize=64)
def max_steps(solver: str, shift: float) -> int:
    """The most steps `solver` runs at this shift. Euler and DPM++: MAX_STEPS. UniPC: diffusers'
    UniPCMultistepScheduler finds its place by looking the first timestep up in its schedule; when the
    official σ (sampling.raw_sigmas, shifted, truncated to int timesteps) give the first two steps the same
    timestep, it starts one step late and fails at the last step with an empty AssertionError
    (`assert self.this_order > 0`). That happens above 250 steps at shift 5 and above 91 at shift 12."""
    if solver != "unipc":
        return MAX_STEPS
    n = 1
    while n < MAX_STEPS and _unipc_first_distinct(n + 1, shift):
        n += 1
    return n


def _unipc_first_distinct(steps: int, shift: float) -> bool:
    """Whether UniPC's first two timesteps differ, computed as sampling.make_unipc_scheduler and diffusers
    compute them (float64 operations in the same order; tests check equality for every step count). Plain
    Python, so that checking a request never imports numpy or torch."""
    if steps < 2:
        return True
    # sampling._official_sigma_max: 1 - linspace(1, 1/1000, 1000)[::-1][0], stored as float32
    sigma_max = struct.unpack("f", struct.pack("f", 1.0 - 1.0 / 1000))[0]
    # np.linspace(sigma_max, 0, steps + 1)[:2] = sigma_max, sigma_max + (0 - sigma_max) / steps
    first = [sigma_max, (0.0 - sigma_max) / steps + sigma_max]
    shifted = [shift * s / (1 + (shift - 1) * s) for s in first]
    if abs(shifted[0] - 1) < 1e-6:       # diffusers keeps σ0 off 1 (log(0) in the UniPC update)
        shifted[0] -= 1e-6
    return int(shifted[0] * 1000) != int(shifted[1] * 1000)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(name: str, v) -> float:
    """A float field: a real, finite number, or UserError naming the field."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            v = float(v) if isinstance(v, str) else None
        except ValueError:
            v = None
        if v is None:
            raise UserError(name, "is not a number", "write a number such as 5.0")
    v = float(v)
    if not math.isfinite(v):
        raise UserError(name, f"{v} is not a finite number", "write a number such as 5.0")
    return v


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
