"""Decide, before anything is loaded, how a model fits this machine — and say why.

`plan()` is pure arithmetic on the bytes that wan_app.sizes counts: weights from the model's shapes,
activations from the token count, fixed costs (CUDA context, swap buffers, a safety margin).

A run has phases that never share the GPU (wan_app.memory keeps them apart):
  encode  umT5 on the device (or on the CPU), the DiT not in VRAM;
  sample  the DiT's resident blocks + the last K blocks streamed from pinned RAM + activations;
  decode  the VAE, after the DiT has left VRAM.
Peak VRAM is the largest phase; peak RAM likewise (including a converted copy of the weights when the
file's dtype differs from the storage dtype: it stays as the weights' CPU home).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .catalog import ModelSpec
from .errors import UserError
from .hardware import GB, Hardware
from .plan_types import ATTENTION_BACKENDS, DTYPES, Overrides, Plan
from .sizes import (
    COMPUTE_BYTES, DEVICE_CONTEXT_GB, ESTIMATE_NOTE, FP8_UPCAST_LINEARS_IN_FLIGHT, MAX_FRAMES_CONSIDERED,
    MPS_WORKING_SET_FRACTION, RAM_BASE_GB, RAM_MARGIN_FRACTION, RAM_MARGIN_MIN_GB, SWAP_BUFFERS,
    TEXT_ENCODER_WORK_GB, VRAM_MARGIN_FRACTION, VRAM_MARGIN_MIN_GB, WEIGHT_BYTES, activation_gb,
    block_gb, model_gb, nonblock_gb, text_encoder_gb, total_params,
    vae_decode_gb, video_host_gb,
)


# ===================================================================================================
# The machine as the planner sees it
# ===================================================================================================
@dataclass(frozen=True)
class _Machine:
    kind: str                 # cuda / mps / cpu
    device: str
    vram_total: float         # GB; for mps the unified memory, for cpu 0
    vram_budget: float        # GB we may fill on the device (after the safety margin)
    vram_margin: float
    ram_total: float
    ram_budget: float
    compute: str              # bf16 / fp16 / fp32
    fp8_fast: bool
    gpu_name: str
    cc: tuple[int, int] | None
    extra_gpus: int
    efficient_sdpa: bool      # torch SDPA's flash or memory-efficient kernel ran here
    attention: tuple[str, ...]
    attention_failures: tuple[tuple[str, str], ...]

    @property
    def half(self) -> str:
        return "fp32" if self.kind == "cpu" else self.compute


def _machine(hw: Hardware) -> _Machine:
    ram_margin = max(RAM_MARGIN_MIN_GB, RAM_MARGIN_FRACTION * hw.ram_total_gb)
    ram_budget = max(0.0, min(hw.ram_available_gb, hw.ram_total_gb) - ram_margin)
    common = dict(ram_total=hw.ram_total_gb, ram_budget=ram_budget, attention=tuple(hw.attention),
                  attention_failures=tuple(hw.attention_failures.items()),
                  efficient_sdpa=bool({"sdpa_flash", "sdpa_efficient"} & set(hw.attention)))
    if hw.gpus:
        g = hw.gpus[0]
        margin = max(VRAM_MARGIN_MIN_GB, VRAM_MARGIN_FRACTION * g.total_gb)
        return _Machine("cuda", "cuda:0", g.total_gb, max(0.0, min(g.total_gb, g.free_gb) - margin), margin,
                        compute="bf16" if g.bf16 else "fp16", fp8_fast=g.fp8, gpu_name=g.name,
                        cc=g.compute_capability, extra_gpus=len(hw.gpus) - 1, **common)
    if hw.mps:
        margin = max(VRAM_MARGIN_MIN_GB, VRAM_MARGIN_FRACTION * hw.ram_total_gb)
        budget = min(MPS_WORKING_SET_FRACTION * hw.ram_total_gb, ram_budget - RAM_BASE_GB["mps"])
        return _Machine("mps", "mps", hw.ram_total_gb, max(0.0, budget), margin, compute="bf16",
                        fp8_fast=False, gpu_name="Apple GPU (MPS)", cc=None, extra_gpus=0, **common)
    return _Machine("cpu", "cpu", 0.0, 0.0, 0.0, compute="fp32", fp8_fast=False, gpu_name="CPU", cc=None,
                    extra_gpus=0, **common)


# ===================================================================================================
# One candidate configuration and its estimate
# ===================================================================================================
@dataclass(frozen=True)
class _Choice:
    weight_dtype: str
    blocks_swapped: int
    te_on_device: bool
    te_dtype: str
    te_kept: bool
    experts: str              # both / one (single-expert models: "both", meaning nothing)
    attention: str
    tiling: bool


@dataclass
class _Est:
    dev: dict                 # phase -> GB on the device (cuda/mps)
    host: dict                # phase -> GB of RAM (for mps/cpu including what the device uses)
    act: float
    tokens: int

    @property
    def peak_dev(self) -> float:
        return max(self.dev.values()) if self.dev else 0.0

    @property
    def peak_host(self) -> float:
        return max(self.host.values())


def _norm_disk(weights_on_disk: str | None) -> str | None:
    if weights_on_disk is None:
        return None
    w = weights_on_disk.lower()
    return "fp8" if w.startswith("fp8") or "e4m3" in w else w


def _efficient(m: _Machine, attention: str) -> bool:
    return attention in ("sage", "flash") or m.efficient_sdpa


def _sample_dev(m: _Machine, spec: ModelSpec, c: _Choice, act: float) -> float:
    a, wd, k = spec.arch, c.weight_dtype, c.blocks_swapped
    bb = block_gb(a, wd)
    upcast = 0.0
    if wd == "fp8" or WEIGHT_BYTES[wd] < COMPUTE_BYTES.get(m.compute, 2):
        upcast = FP8_UPCAST_LINEARS_IN_FLIGHT * a.dim * a.ffn_dim * COMPUTE_BYTES[m.compute] / GB
    return (DEVICE_CONTEXT_GB[m.kind] + nonblock_gb(a, wd) + (a.num_layers - k) * bb
            + (SWAP_BUFFERS * bb if k > 0 else 0.0) + upcast + act)


def _estimate(m: _Machine, spec: ModelSpec, w: int, h: int, frames: int, c: _Choice,
              disk: str | None) -> _Est:
    a = spec.arch
    tokens = spec.seq_len(frames, w, h)
    act = activation_gb(spec, tokens, m.compute, _efficient(m, c.attention), sage=c.attention == "sage")
    mg = model_gb(a, c.weight_dtype)
    two = spec.experts == 2
    te = text_encoder_gb(c.te_dtype, spec)
    te_kept = te if c.te_kept else 0.0
    base = RAM_BASE_GB[m.kind]
    video = video_host_gb(w, h, frames)
    converting = disk is not None and disk != c.weight_dtype
    if m.kind == "cpu":
        # Everything lives in RAM; "one" expert means the other is re-read from its file at the switch.
        weights = mg * (2 if two and c.experts == "both" else 1)
        sample = _sample_dev(m, spec, c, act)
        host = {"encode": base + weights + max(te_kept, te + TEXT_ENCODER_WORK_GB),
                "sample": base + weights + te_kept + sample,
                "decode": base + weights + te_kept + vae_decode_gb(spec, w, h, frames, c.tiling) + video}
        return _Est({}, host, act, tokens)
    ctx = DEVICE_CONTEXT_GB[m.kind]
    dev = {"encode": ctx + (te + TEXT_ENCODER_WORK_GB if c.te_on_device else 0.0),
           "sample": _sample_dev(m, spec, c, act),
           "decode": ctx + vae_decode_gb(spec, w, h, frames, c.tiling)}
    if m.kind == "cuda":
        # RAM holds the pinned swapped blocks; A14B "both" keeps both experts whole in RAM (WAN_FACTS /
        # DESIGN: 57 GB in bf16), "one" only the active expert's swapped blocks.
        dit = 2 * mg if two and c.experts == "both" else c.blocks_swapped * block_gb(a, c.weight_dtype)
    else:
        # MPS: unified memory; the active expert is already counted in the device phase.
        dit = mg if two and c.experts == "both" else 0.0
    te_encode = 0.0 if c.te_on_device else te + TEXT_ENCODER_WORK_GB
    # Converting a file to another dtype makes an anonymous copy of the whole DiT, and it stays: the
    # memory module keeps every weight's CPU copy as its home off the GPU (wan_app.memory._Homes).
    # Without conversion those homes are the file's memory-mapped pages, which the kernel can drop,
    # so only the pinned swapped blocks count.
    if converting and m.kind == "cuda":
        dit = max(dit, mg * (2 if two and c.experts == "both" else 1))
    load = base + dit + te_kept
    host = {"load": load,
            "encode": base + dit + max(te_kept, te_encode),
            "sample": base + dit + te_kept,
            "decode": base + dit + te_kept + video}
    if m.kind == "mps":
        host = {k: v + dev.get(k, 0.0) for k, v in host.items()}
    return _Est(dev, host, act, tokens)


def _fits(m: _Machine, e: _Est) -> bool:
    if m.kind != "cpu" and e.peak_dev > m.vram_budget:
        return False
    return e.peak_host <= m.ram_budget


def _why_not(m: _Machine, e: _Est) -> str:
    parts = []
    if m.kind != "cpu" and e.peak_dev > m.vram_budget:
        phase = max(e.dev, key=e.dev.get)
        mem = "GPU memory" if m.kind == "cuda" else "GPU working set"
        parts.append(f"needs {e.peak_dev:.1f} GB of {mem} while {_PHASE_WORDS[phase]}; "
                     f"{m.vram_budget:.1f} GB usable")
    if e.peak_host > m.ram_budget:
        phase = max(e.host, key=e.host.get)
        parts.append(f"needs {e.peak_host:.1f} GB of RAM while {_PHASE_WORDS[phase]}; "
                     f"{m.ram_budget:.1f} GB usable")
    return " and ".join(parts) or "fits"


_PHASE_WORDS = {"load": "loading", "encode": "encoding the prompt", "sample": "sampling",
                "decode": "decoding"}


# ===================================================================================================
# The search: preferences in order, first configuration that fits wins
# ===================================================================================================
@dataclass
class _Solution:
    choice: _Choice
    est: _Est
    feasible: bool
    why: str


def _auto_attention(m: _Machine) -> str:
    if m.kind == "cuda":
        for name in ("sage", "flash"):
            if name in m.attention:
                return name
    return "sdpa"


def _dtype_candidates(m: _Machine, ov: Overrides, disk: str | None) -> list[str]:
    if ov.weight_dtype:
        return [ov.weight_dtype]
    if m.kind == "mps":
        return ["bf16"]                      # MPS has no float8 tensors
    if disk == "fp8":
        return ["fp8"]                       # a 16-bit copy of fp8 values adds memory, not quality
    if m.kind == "cpu":
        return ["fp32", "bf16", "fp8"]
    return [m.half, "fp8"]


def _solve(m: _Machine, spec: ModelSpec, w: int, h: int, frames: int, ov: Overrides,
           disk: str | None) -> _Solution:
    n = spec.arch.num_layers
    attention = ov.attention if ov.attention not in (None, "auto") else _auto_attention(m)
    te_place = ov.text_encoder if ov.text_encoder not in (None, "auto") else None
    if m.kind == "cpu":
        te_opts = [(False, "bf16"), (False, "fp8")]
    else:
        dev_opts = [(True, "bf16"), (True, "fp8")] if m.kind == "cuda" else [(True, "bf16")]
        cpu_opts = [(False, "bf16"), (False, "fp8")]
        te_opts = {"gpu": dev_opts, "cpu": cpu_opts}.get(te_place, dev_opts + cpu_opts)
    exp_opts = [ov.experts_resident] if (ov.experts_resident and spec.experts == 2) else (
        ["both", "one"] if spec.experts == 2 else ["both"])
    tile_opts = [ov.vae_tiling] if ov.vae_tiling is not None else [False, True]
    candidates = _dtype_candidates(m, ov, disk)
    last: _Solution | None = None
    for i, wd in enumerate(candidates):
        # Blocks swapped: the fewest K whose sampling phase fits (K=1 costs more than K=0: two buffers).
        probe = _Choice(wd, 0, False, "bf16", False, exp_opts[-1], attention, True)
        act = activation_gb(spec, spec.seq_len(frames, w, h), m.compute, _efficient(m, attention),
                            sage=attention == "sage")
        if ov.blocks_swapped is not None:
            k = ov.blocks_swapped
        elif m.kind == "cuda":
            k = next((k for k in range(n + 1)
                      if _sample_dev(m, spec, replace(probe, blocks_swapped=k), act) <= m.vram_budget), n)
        else:
            k = 0
        # "Acceptable swap" for 16-bit weights is none at all: each swapped block crosses PCIe twice a
        # step (cond and uncond), and fp8 halves both the footprint and that traffic. Keeping this rule
        # strict is also what makes "more VRAM never means more blocks swapped" hold.
        if (m.kind == "cuda" and wd != "fp8" and ov.weight_dtype is None and ov.blocks_swapped is None
                and k > 0 and i < len(candidates) - 1):
            continue
        for te_dev, te_dtype in te_opts:
            for exp in exp_opts:
                for tiling in tile_opts:
                    for kept in (True, False):
                        c = _Choice(wd, k, te_dev, te_dtype, kept, exp, attention, tiling)
                        e = _estimate(m, spec, w, h, frames, c, disk)
                        if _fits(m, e):
                            return _Solution(c, e, True, "fits")
                        if last is None or not kept:
                            last = _Solution(c, e, False, _why_not(m, e))
    assert last is not None
    return last


def _max_frames(m: _Machine, spec: ModelSpec, w: int, h: int, ov: Overrides, disk: str | None) -> int:
    """Largest 4n+1 with a configuration that fits (feasibility only grows with fewer frames)."""
    def ok(n: int) -> bool:
        return _solve(m, spec, w, h, 4 * n + 1, ov, disk).feasible
    hi_n = (MAX_FRAMES_CONSIDERED - 1) // 4
    if not ok(0):
        return 0
    if ok(hi_n):
        return 4 * hi_n + 1
    lo, hi = 0, hi_n            # ok(lo), not ok(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return 4 * lo + 1


# ===================================================================================================
# Public API
# ===================================================================================================
_OVERRIDE_FIELDS = ("weight_dtype", "blocks_swapped", "text_encoder", "attention", "vae_tiling",
                    "experts_resident")


def _validate_overrides(hw: Hardware, m: _Machine, spec: ModelSpec, ov: Overrides) -> list[str]:
    """Reject values that make no sense here (before any fitting). Returns the forced field names."""
    n = spec.arch.num_layers
    forced = []
    if ov.weight_dtype is not None:
        if ov.weight_dtype not in DTYPES:
            raise UserError("weight_dtype", f"'{ov.weight_dtype}' is not a storage dtype",
                            "use one of " + ", ".join(DTYPES))
        if ov.weight_dtype == "fp8" and m.kind == "mps":
            raise UserError("weight_dtype", "Apple GPUs (MPS) have no float8 tensors", "use bf16")
        if ov.weight_dtype == "bf16" and m.kind == "cuda" and m.compute != "bf16":
            raise UserError("weight_dtype", f"{m.gpu_name} (compute capability {m.cc[0]}.{m.cc[1]}) has no bf16",
                            "use fp16 or fp8")
        forced.append("weight_dtype")
    if ov.blocks_swapped is not None:
        if not isinstance(ov.blocks_swapped, int) or isinstance(ov.blocks_swapped, bool) \
                or not 0 <= ov.blocks_swapped <= n:
            raise UserError("blocks_swapped", f"{ov.blocks_swapped!r} is outside 0..{n}",
                            f"{spec.name} has {n} blocks; choose 0 to {n}")
        if m.kind != "cuda" and ov.blocks_swapped > 0:
            raise UserError("blocks_swapped", f"there is no separate GPU memory to swap out of on {m.device}",
                            "use 0 (block swap needs an NVIDIA GPU)")
        forced.append("blocks_swapped")
    if ov.text_encoder not in (None, "auto"):
        if ov.text_encoder not in ("gpu", "cpu"):
            raise UserError("text_encoder", f"'{ov.text_encoder}' is not a place", "use gpu or cpu")
        if ov.text_encoder == "gpu" and m.kind == "cpu":
            raise UserError("text_encoder", "this machine has no GPU", "use cpu")
        forced.append("text_encoder")
    if ov.attention not in (None, "auto"):
        if ov.attention not in ATTENTION_BACKENDS:
            raise UserError("attention", f"'{ov.attention}' is unknown", "use sage, flash, sdpa or native")
        if ov.attention in ("sage", "flash") and ov.attention not in hw.attention:
            why = hw.attention_failures.get(ov.attention, "it did not run on this machine")
            raise UserError("attention", f"{ov.attention} is not usable here ({why})",
                            "use sdpa (always available), or install a working "
                            + ("sageattention" if ov.attention == "sage" else "flash-attn"))
        forced.append("attention")
    if ov.vae_tiling is not None:
        forced.append("vae_tiling")
    if ov.experts_resident is not None:
        if ov.experts_resident not in ("both", "one"):
            raise UserError("experts_resident", f"'{ov.experts_resident}' is not an option", "use both or one")
        if spec.experts == 2:
            forced.append("experts_resident")
    return forced


_FIX_WORDS = {
    "weight_dtype": lambda c: f"weight_dtype={c.weight_dtype}",
    "blocks_swapped": lambda c: f"blocks_swapped={c.blocks_swapped}",
    "text_encoder": lambda c: f"text_encoder={'gpu' if c.te_on_device else 'cpu'}",
    "attention": lambda c: f"attention={c.attention}",
    "vae_tiling": lambda c: f"vae_tiling={c.tiling}",
    "experts_resident": lambda c: f"experts_resident={c.experts}",
}


def _unforce(ov: Overrides, name: str) -> Overrides:
    return replace(ov, **{name: None})


def plan(hw: Hardware, spec: ModelSpec, width: int, height: int, frames: int,
         overrides: Overrides | None = None, weights_on_disk: str | None = None) -> Plan:
    """Decide how this run fits this machine. Pure: the same inputs always give the same Plan.

    Raises UserError when an override is invalid or, being forced, cannot fit (with numbers and what
    would fit). A run that cannot fit for other reasons (too many frames, a model too big for the
    machine) returns a Plan whose `blocker` says why; wan_app.engine refuses it before loading.
    """
    ov = overrides or Overrides()
    m = _machine(hw)
    disk = _norm_disk(weights_on_disk)
    forced = _validate_overrides(hw, m, spec, ov)
    sol = _solve(m, spec, width, height, frames, ov, disk)
    if not sol.feasible and forced:
        _blame_override(m, spec, width, height, frames, ov, disk, forced, sol)
    max_frames = _max_frames(m, spec, width, height, ov, disk)
    c, e = sol.choice, sol.est
    blocker = None
    if not sol.feasible:
        if 1 <= max_frames < frames:
            blocker = {"field": "frames",
                       "problem": f"{frames} frames at {width}x{height} do not fit: {sol.why}",
                       "fix": f"at most {max_frames} frames here; lower the size, or use Extend for longer videos"}
        else:
            blocker = {"field": "model",
                       "problem": f"{spec.name} does not fit this machine at {width}x{height}: {sol.why}",
                       "fix": "a smaller model (e.g. Wan2.1 T2V 1.3B), a smaller size, or more RAM/VRAM"}
    p = Plan(
        device=m.device, compute_dtype=m.compute, weight_dtype=c.weight_dtype,
        text_encoder_device=m.device if c.te_on_device else "cpu", text_encoder_dtype=c.te_dtype,
        blocks_total=spec.arch.num_layers, blocks_swapped=c.blocks_swapped,
        attention_backend=c.attention, vae_tiling=c.tiling, max_frames=max_frames,
        experts_resident=c.experts, est_vram_gb=_up(e.peak_dev) if m.kind != "cpu" else 0.0,
        est_ram_gb=_up(e.peak_host), forced=list(forced), text_encoder_kept=c.te_kept, blocker=blocker)
    p.reasons = _reasons(hw, m, spec, width, height, frames, c, e, max_frames, forced, disk, blocker)
    if sol.feasible:
        _decide_cfg_batch(p, m, spec, c, e, width, height, frames, disk, forced)
    return p


def _decide_cfg_batch(p: Plan, m: _Machine, spec: ModelSpec, c: _Choice, e: _Est, w: int, h: int,
                      frames: int, disk: str | None, forced: list[str]) -> None:
    """CFG needs a cond and an uncond forward per step. One after another, every swapped block crosses
    the bus twice per step (2k copies). As one batch of 2 it crosses once, but the doubled activations
    push j = ceil(act / block) more blocks out: k + j copies. Batch when k + j < 2k and it fits.
    With no swapping there is nothing to save (compute is the same either way)."""
    k = c.blocks_swapped
    if m.kind != "cuda" or k == 0:
        return
    a = spec.arch
    j = 0 if "blocks_swapped" in forced else math.ceil(e.act / block_gb(a, c.weight_dtype))
    cb = replace(c, blocks_swapped=min(a.num_layers, k + j))
    eb = _estimate(m, spec, w, h, frames, cb, disk)
    sample_b = _sample_dev(m, spec, cb, 2 * eb.act)
    fits = sample_b <= m.vram_budget and eb.peak_host <= m.ram_budget
    if fits and cb.blocks_swapped < 2 * k:
        p.cfg_batched = True
        p.blocks_swapped = cb.blocks_swapped
        p.est_vram_gb = _up(max(eb.peak_dev, sample_b))
        p.est_ram_gb = _up(eb.peak_host)
        p.reasons.insert(-1, f"CFG as one batch of 2: {cb.blocks_swapped} block copies per step instead of "
                             f"{2 * k} (cond and uncond one after another); the doubled activations "
                             f"(+{_gb(eb.act)}) move {cb.blocks_swapped - k} more blocks to RAM")
    else:
        p.reasons.insert(-1, f"CFG passes one after another ({2 * k} block copies per step): batching them "
                             f"would need {_gb(sample_b)} while sampling with {cb.blocks_swapped} blocks swapped")


def _up(x: float) -> float:
    return math.ceil(x * 100) / 100


def _blame_override(m, spec, w, h, frames, ov, disk, forced, sol) -> None:
    for name in forced:
        alt = _solve(m, spec, w, h, frames, _unforce(ov, name), disk)
        if alt.feasible:
            raise UserError(name, f"forced {name}={getattr(ov, name)} cannot fit: {sol.why}",
                            f"{_FIX_WORDS[name](alt.choice)} fits (or let the planner choose)")
    free = _solve(m, spec, w, h, frames, Overrides(), disk)
    if free.feasible:
        name = forced[0]
        raise UserError(name, f"the forced choices ({', '.join(forced)}) cannot fit together: {sol.why}",
                        "let the planner choose: " + ", ".join(_FIX_WORDS[f](free.choice) for f in forced))


def require_runnable(p: Plan) -> None:
    """Raise the plan's blocker as a UserError (the engine calls this before loading anything)."""
    if p.blocker:
        raise UserError(p.blocker["field"], p.blocker["problem"], p.blocker["fix"])


# ===================================================================================================
# Reasons: one line per decision, numbers in GB with one decimal
# ===================================================================================================
def _gb(x: float) -> str:
    return f"{x:.1f} GB"


def _size_word(spec: ModelSpec) -> str:
    p = total_params(spec.arch)
    return f"{p / 1e9:.1f}B" if p >= 1e9 else f"{p / 1e6:.0f}M" if p >= 1e6 else f"{p / 1e3:.0f}K"


def _reasons(hw, m: _Machine, spec, w, h, frames, c: _Choice, e: _Est, max_frames, forced, disk,
             blocker) -> list[str]:
    a, n, k = spec.arch, spec.arch.num_layers, c.blocks_swapped
    tag = lambda name: " (forced by you)" if name in forced else ""  # noqa: E731
    r: list[str] = []
    if m.kind == "cuda":
        r.append(f"Device {m.device}: {m.gpu_name}, {m.vram_total:.1f} GB; {_gb(m.vram_budget)} usable after "
                 f"a {_gb(m.vram_margin)} safety margin" + (f"; {m.extra_gpus} more GPU(s) not used"
                                                            if m.extra_gpus else ""))
        r.append(f"Compute in {m.compute}" + ("" if m.compute == "bf16" else
                 f": compute capability {m.cc[0]}.{m.cc[1]} has no bf16 (Wan may overflow in fp16 on rare prompts)"))
    elif m.kind == "mps":
        r.append(f"Device mps: Apple GPU sharing {m.ram_total:.1f} GB; {_gb(m.vram_budget)} usable by the GPU "
                 f"(Metal working-set limit); no block swap (memory is already shared); compute in bf16")
    else:
        r.append("Device cpu: no GPU; compute in fp32; expect minutes per step at full size")
    r.append(f"RAM: {m.ram_total:.1f} GB; {_gb(m.ram_budget)} usable after what the system uses and a margin")

    half = "bf16" if m.kind == "cpu" else m.half
    mg_half, mg = model_gb(a, half), model_gb(a, c.weight_dtype)
    what = f"{spec.name}: {_size_word(spec)} params" + (" per expert" if spec.experts == 2 else "") + ","
    if "weight_dtype" in forced:
        r.append(f"Weights in {c.weight_dtype} ({_gb(mg)}){tag('weight_dtype')}")
    elif disk == "fp8" and c.weight_dtype == "fp8":
        r.append(f"Weights in fp8 ({_gb(mg)}): the files are fp8, so a {half} copy ({_gb(mg_half)}) would "
                 f"cost memory and bring back no quality")
    elif c.weight_dtype == "fp8":
        r.append(f"{what} in {half} is {_gb(mg_half)}; it does not fit this {m.vram_total:.0f} GB card whole → "
                 f"fp8 ({_gb(mg)}), {k} of {n} blocks swapped")
    else:
        r.append(f"{what} in {c.weight_dtype} is {_gb(mg)}" + (
            "; it fits on the card whole" if m.kind != "cpu" else "; held in RAM"))
    if c.weight_dtype == "fp8":
        r.append("fp8 weights are upcast one layer at a time to " + m.compute + (
            "; this GPU also has fast fp8 matmul" if m.fp8_fast else
            "; this device has no fast fp8 matmul, so fp8 saves memory, not time"))
    if disk and disk != c.weight_dtype:
        r.append(f"The files are {disk}: loading converts them to {c.weight_dtype} in RAM "
                 f"(counted: up to {_gb(mg * (2 if spec.experts == 2 and c.experts == 'both' else 1))} while loading)")

    if m.kind == "cuda":
        bb = block_gb(a, c.weight_dtype)
        fixed = DEVICE_CONTEXT_GB["cuda"] + nonblock_gb(a, c.weight_dtype)
        if k == 0:
            r.append(f"All {n} blocks resident ({_gb(n * bb)}){tag('blocks_swapped')}: CUDA context + "
                     f"non-block weights {_gb(fixed)} + activations {_gb(e.act)} ({e.tokens:,} tokens) fit "
                     f"in {_gb(m.vram_budget)}")
        else:
            r.append(f"{k} of {n} blocks swapped{tag('blocks_swapped')} (the last {k}, {bb * 1000:.0f} MB each, "
                     f"{_gb(k * bb)} pinned in RAM): after CUDA context + non-block weights {_gb(fixed)}, "
                     f"activations {_gb(e.act)} ({e.tokens:,} tokens) and {SWAP_BUFFERS} in-flight swap "
                     f"buffers {_gb(SWAP_BUFFERS * bb)}, {n - k} blocks fit in {_gb(m.vram_budget)}")

    te_gb = text_encoder_gb(c.te_dtype, spec)
    if c.te_on_device:
        r.append(f"umT5-xxl text encoder on {m.device} in {c.te_dtype} ({_gb(te_gb)}) to encode the prompt, "
                 f"then off the GPU before sampling{tag('text_encoder')}")
    else:
        if "text_encoder" in forced:
            why = "forced by you"
        elif m.kind == "cpu":
            why = "no GPU"
        else:
            need = DEVICE_CONTEXT_GB[m.kind] + text_encoder_gb("fp8" if m.kind == "cuda" else "bf16", spec) \
                + TEXT_ENCODER_WORK_GB
            why = (f"even in fp8 it needs {_gb(need)} on the GPU, {_gb(m.vram_budget)} usable"
                   if need > m.vram_budget else "RAM or VRAM too tight to run it on the GPU")
        r.append(f"umT5-xxl text encoder on the CPU in {c.te_dtype} ({_gb(te_gb)} RAM; {why}): prompt encoding "
                 f"is slower (tens of seconds), cached per prompt")
    r.append("Text encoder kept in RAM between prompts" if c.te_kept else
             "Text encoder released after encoding (not enough RAM to keep it); a new prompt reloads it")

    if spec.experts == 2:
        if c.experts == "both":
            r.append(f"Both experts kept in RAM ({_gb(2 * mg)}){tag('experts_resident')}; "
                     f"the GPU holds one at a time")
        else:
            why = "forced by you" if "experts_resident" in forced else (
                f"both would need {_gb(2 * mg)} of RAM")
            r.append(f"One expert at a time ({why}): the low-noise expert is read from its memory-mapped file "
                     f"at the switch (seconds to a minute, depending on the disk)")

    failures = dict(m.attention_failures)
    att = f"Attention: {c.attention}{tag('attention')}"
    skipped = [f"{x} unavailable: {failures[x]}" for x in ("sage", "flash")
               if m.kind == "cuda" and x in failures and c.attention != x]
    if m.kind == "cuda" and skipped and c.attention in ("sdpa", "native"):
        att += " (" + "; ".join(skipped) + ")"
    if c.attention in ("sdpa", "native") and not m.efficient_sdpa:
        att += ("; only torch's math kernel ran here: its O(tokens²) scores limit the frame count")
    r.append(att)

    dec_full = vae_decode_gb(spec, w, h, frames, False)
    room = (m.vram_budget - DEVICE_CONTEXT_GB[m.kind]) if m.kind != "cpu" else m.ram_budget
    r.append(f"VAE decode at {w}x{h} needs ~{_gb(dec_full)} untiled (4 frames at a time, so not the frame "
             f"count); {_gb(room)} free after the DiT leaves → tiling {'on' if c.tiling else 'off'}"
             + tag("vae_tiling"))

    if blocker:
        r.append(f"Cannot run as asked: {blocker['problem']} — {blocker['fix']}")
    else:
        r.append(f"Frames: up to {max_frames} fit at {w}x{h} (asked {frames})")
    r.append(f"Estimated peak: VRAM {_gb(e.peak_dev)}, RAM {_gb(e.peak_host)}" if m.kind != "cpu"
             else f"Estimated peak RAM {_gb(e.peak_host)}")
    r.append(ESTIMATE_NOTE)
    return r


# ===================================================================================================
# After a CUDA out-of-memory error
# ===================================================================================================
def replan_after_oom(plan: Plan, hw: Hardware, spec: ModelSpec, width: int, height: int,
                     frames: int) -> Plan | None:
    """The estimate was wrong: give more room. More swap (+50% of the resident blocks, at least 4), VAE
    tiling on, the text encoder on the CPU — whatever is left and fits in RAM. None when nothing is."""
    m = _machine(hw)
    c = _Choice(plan.weight_dtype, plan.blocks_swapped, plan.text_encoder_device != "cpu",
                plan.text_encoder_dtype, bool(getattr(plan, "text_encoder_kept", False)),
                plan.experts_resident, plan.attention_backend, plan.vae_tiling)
    n, changes = plan.blocks_total, []

    def ram_ok(cand: _Choice) -> bool:
        return _estimate(m, spec, width, height, frames, cand, None).peak_host <= m.ram_budget

    if m.kind == "cuda" and c.blocks_swapped < n:
        resident = n - c.blocks_swapped
        k = min(n, c.blocks_swapped + max(4, math.ceil(resident / 2)))
        while k > c.blocks_swapped and not ram_ok(replace(c, blocks_swapped=k)):
            k -= 1
        if k > c.blocks_swapped:
            changes.append(f"blocks swapped {c.blocks_swapped} → {k}")
            c = replace(c, blocks_swapped=k)
    if not c.tiling:
        c = replace(c, tiling=True)
        changes.append("VAE tiling on")
    if c.te_on_device:
        for dt in ("bf16", "fp8"):
            cand = replace(c, te_on_device=False, te_dtype=dt, te_kept=False)
            if ram_ok(cand):
                c = cand
                changes.append(f"text encoder moved to the CPU ({dt})")
                break
    if not changes:
        return None
    e = _estimate(m, spec, width, height, frames, c, None)
    line = "After an out-of-memory error: " + ", ".join(changes)
    return replace(plan, blocks_swapped=c.blocks_swapped, vae_tiling=c.tiling,
                   text_encoder_device=m.device if c.te_on_device else "cpu", text_encoder_dtype=c.te_dtype,
                   text_encoder_kept=c.te_kept,
                   est_vram_gb=_up(e.peak_dev) if m.kind != "cpu" else 0.0, est_ram_gb=_up(e.peak_host),
                   reasons=list(plan.reasons) + [line], forced=list(plan.forced))


# ===================================================================================================
# What `python app.py plan` prints
# ===================================================================================================
def explain(hw: Hardware, p: Plan) -> str:
    lines = ["Machine", *("  " + x for x in hw.describe().splitlines()), "", "Plan"]
    fields = [("device", p.device), ("compute dtype", p.compute_dtype), ("weights", p.weight_dtype),
              ("text encoder", f"{p.text_encoder_device} ({p.text_encoder_dtype})"),
              ("blocks swapped", f"{p.blocks_swapped} of {p.blocks_total}"),
              ("experts in RAM", p.experts_resident), ("attention", p.attention_backend),
              ("VAE tiling", "on" if p.vae_tiling else "off"), ("max frames", str(p.max_frames)),
              ("est. peak VRAM", _gb(p.est_vram_gb)), ("est. peak RAM", _gb(p.est_ram_gb))]
    for name, value in fields:
        lines.append(f"  {name:<15} {value}" + ("  (forced)" if _FIELD_OF.get(name) in p.forced else ""))
    lines += ["", "Why"] + ["  - " + x for x in p.reasons]
    return "\n".join(lines)


_FIELD_OF = {"weights": "weight_dtype", "text encoder": "text_encoder", "blocks swapped": "blocks_swapped",
             "experts in RAM": "experts_resident", "attention": "attention", "VAE tiling": "vae_tiling"}
