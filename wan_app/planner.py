"""Decide, before anything is loaded, how a model fits this machine — and say why.

`plan()` is pure arithmetic on the bytes that wan_app.sizes counts: weights from the model's shapes and
the files that will load (their dtype decides what stays memory-mapped), activations from the token
count, fixed costs (CUDA context, swap buffers, a safety margin).

A run has phases that never share the GPU (wan_app.memory and wan_app.vae_codec keep them apart):
  encode  umT5 on the device (or on the CPU); the VAE encodes a long video's overlap; the DiT not in VRAM;
  sample  the DiT's resident blocks + the last K blocks streamed from pinned RAM + activations;
  decode  the VAE, after the DiT has left VRAM.
Peak VRAM is the largest phase. RAM has two kinds, budgeted apart: anonymous memory (converted weights,
pinned swap blocks, activations on a CPU, the VAE, the process) must fit; memory-mapped weight files are
page cache the kernel can drop and read again, so they only decide speed.

Reasons are written from the final plan, never from a candidate, so every number in them is a plan field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .catalog import ModelSpec
from .errors import UserError
from .hardware import GB, Hardware
from .compile_blocks import unavailable_reason
from .plan_types import ATTENTION_BACKENDS, DTYPES, DiskWeights, Overrides, Plan
from .sizes import (
    COMPUTE_BYTES, DEVICE_CONTEXT_GB, ESTIMATE_NOTE, FP8_UPCAST_LINEARS_IN_FLIGHT, MAX_FRAMES_CONSIDERED,
    MPS_WORKING_SET_FRACTION, RAM_BASE_GB, RAM_MARGIN_FRACTION, RAM_MARGIN_MIN_GB, RAM_SYSTEM_FRACTION,
    SWAP_BUFFERS, TEXT_ENCODER_CPU_WORK_GB, TEXT_ENCODER_WORK_GB, VRAM_MARGIN_FRACTION, VRAM_MARGIN_MIN_GB,
    WEIGHT_BYTES, activation_gb,
    block_gb, clip_vision_gb, dit_anon_small_gb, model_gb, nonblock_gb, text_encoder_anon_gb, text_encoder_gb, total_params,
    vae_decode_gb, vae_weights_gb, video_host_gb,
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
    scaled_mm: bool           # fp8 matmul (torch._scaled_mm) runs here
    gpu_name: str
    cc: tuple[int, int] | None
    extra_gpus: int
    efficient_sdpa: bool      # torch SDPA's flash or memory-efficient kernel ran here
    attention: tuple[str, ...]
    attention_failures: tuple[tuple[str, str], ...]
    triton: bool = False

    @property
    def half(self) -> str:
        return "fp32" if self.kind == "cpu" else self.compute

    @property
    def te_half(self) -> str:
        """umT5's 16-bit dtype: bf16 where the device has it (T5 overflows fp16; transformers keeps its
        `wo` in fp32 then), fp16 on GPUs without bf16. The CPU runs bf16 kernels."""
        return "fp16" if self.kind == "cuda" and self.compute == "fp16" else "bf16"


def _machine(hw: Hardware) -> _Machine:
    # The budget comes from the machine's size, not from what happens to be free this second, so the plan
    # shown in Settings or by `app.py plan` is the plan the run gets; the run warns when other programs
    # hold more than the system share (wan_app.pipeline).
    ram_margin = max(RAM_MARGIN_MIN_GB, RAM_MARGIN_FRACTION * hw.ram_total_gb)
    ram_budget = max(0.0, hw.ram_total_gb * (1 - RAM_SYSTEM_FRACTION) - ram_margin)
    common = dict(ram_total=hw.ram_total_gb, ram_budget=ram_budget, attention=tuple(hw.attention),
                  attention_failures=tuple(hw.attention_failures.items()),
                  efficient_sdpa=bool({"sdpa_flash", "sdpa_efficient"} & set(hw.attention)), triton=hw.triton)
    if hw.gpus:
        g = hw.gpus[0]
        margin = max(VRAM_MARGIN_MIN_GB, VRAM_MARGIN_FRACTION * g.total_gb)
        return _Machine("cuda", "cuda:0", g.total_gb, max(0.0, min(g.total_gb, g.free_gb) - margin), margin,
                        compute="bf16" if g.bf16 else "fp16", gpu_name=g.name,
                        scaled_mm=g.fp8 if g.scaled_mm is None else g.scaled_mm,
                        cc=g.compute_capability, extra_gpus=len(hw.gpus) - 1, **common)
    if hw.mps:
        margin = max(VRAM_MARGIN_MIN_GB, VRAM_MARGIN_FRACTION * hw.ram_total_gb)
        budget = min(MPS_WORKING_SET_FRACTION * hw.ram_total_gb, ram_budget - RAM_BASE_GB["mps"])
        return _Machine("mps", "mps", hw.ram_total_gb, max(0.0, budget), margin, compute="bf16", scaled_mm=False,
                        gpu_name="Apple GPU (MPS)", cc=None, extra_gpus=0, **common)
    return _Machine("cpu", "cpu", 0.0, 0.0, 0.0, compute="fp32", scaled_mm=False, gpu_name="CPU", cc=None,
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
    cfg_batched: bool = False


@dataclass
class _Est:
    dev: dict                 # phase -> GB on the device (cuda/mps)
    host: dict                # phase -> GB of anonymous RAM (for mps including what the device uses)
    file: float               # GB of memory-mapped weight files in use (page cache, may be dropped)
    act: float                # activations of one forward as it runs (doubled when CFG is batched)
    tokens: int
    converted: float          # GB of DiT weights converted to another dtype while loading (anonymous)
    cache: dict = None        # phase -> GB of mapped file pages that phase reads (they should fit beside `host`)

    @property
    def peak_dev(self) -> float:
        return max(self.dev.values()) if self.dev else 0.0

    @property
    def peak_host(self) -> float:
        return max(self.host.values())


def _efficient(m: _Machine, attention: str) -> bool:
    return attention in ("sage", "flash") or m.efficient_sdpa


def _block_gb(spec: ModelSpec, wd: str, disk: DiskWeights | None) -> float:
    """One block's weights in storage dtype `wd`; a GGUF file's blocks as the file stores them."""
    if wd == "gguf":
        return (disk.gguf_block_bytes if disk else 0) / GB
    return block_gb(spec.arch, wd, spec.clip)


def _nonblock_gb(spec: ModelSpec, wd: str, disk: DiskWeights | None) -> float:
    if wd == "gguf":
        return (disk.gguf_nonblock_bytes if disk else 0) / GB
    return nonblock_gb(spec.arch, wd)


def _model_gb(spec: ModelSpec, wd: str, disk: DiskWeights | None) -> float:
    return spec.arch.num_layers * _block_gb(spec, wd, disk) + _nonblock_gb(spec, wd, disk)


def _lora_gb(m: _Machine, disk: DiskWeights | None) -> tuple[float, float]:
    """(all LoRA tensors of one expert, those in one block) in GB, stored in the compute dtype."""
    if disk is None or not disk.lora_bytes:
        return 0.0, 0.0
    scale = COMPUTE_BYTES[m.compute] / 2
    return disk.lora_bytes * scale / GB, disk.lora_block_bytes * scale / GB


def _sample_dev(m: _Machine, spec: ModelSpec, c: _Choice, act: float, disk: DiskWeights | None = None) -> float:
    """The sampling phase on one device: everything but the swapped blocks (the last K live in RAM and two
    are in flight, each with its LoRA tensors), the per-layer upcast of low-precision weights, and the
    activations."""
    a, wd, k = spec.arch, c.weight_dtype, c.blocks_swapped
    lora, lora_block = _lora_gb(m, disk)
    bb = _block_gb(spec, wd, disk) + lora_block
    upcast = 0.0
    # fp8 and GGUF weights are upcast / dequantized one linear at a time; so are 16-bit on a CPU
    if wd in ("fp8", "gguf") or WEIGHT_BYTES[wd] < COMPUTE_BYTES.get(m.compute, 2):
        upcast = FP8_UPCAST_LINEARS_IN_FLIGHT * a.dim * a.ffn_dim * COMPUTE_BYTES[m.compute] / GB
    lora_rest = lora - a.num_layers * lora_block            # LoRA tensors outside the blocks (the head...)
    return (DEVICE_CONTEXT_GB[m.kind] + _nonblock_gb(spec, wd, disk) + lora_rest + (a.num_layers - k) * bb
            + (SWAP_BUFFERS * bb if k > 0 else 0.0) + upcast + act)


def _act(m: _Machine, spec: ModelSpec, tokens: int, attention: str, batched: bool) -> float:
    one = activation_gb(spec, tokens, m.compute, _efficient(m, attention), sage=attention == "sage")
    return 2 * one if batched else one


def _estimate(m: _Machine, spec: ModelSpec, w: int, h: int, frames: int, c: _Choice,
              disk: DiskWeights) -> _Est:
    a = spec.arch
    tokens = spec.seq_len(frames, w, h)
    act = _act(m, spec, tokens, c.attention, c.cfg_batched)
    two = spec.experts == 2
    experts_loaded = 2 if two and c.experts == "both" else 1
    mg = _model_gb(spec, c.weight_dtype, disk)
    # A file in the storage dtype stays memory-mapped (file-backed); any other is converted into an
    # anonymous copy that stays all run long as the weights' CPU home (wan_app.memory._Homes). Unknown
    # files (a simulated machine) are taken to be in the storage dtype, as a matching download would be.
    converting = disk.dit is not None and disk.dit != c.weight_dtype
    lora, _ = _lora_gb(m, disk)
    dit_anon = experts_loaded * ((mg if converting else dit_anon_small_gb(a, c.weight_dtype, m.compute, spec))
                                 + lora)           # attached LoRA tensors are anonymous memory
    dit_file = 0.0 if converting else experts_loaded * (disk.dit_bytes / GB if disk.dit_bytes else mg)
    te_anon = text_encoder_anon_gb(c.te_dtype, disk.text_encoder, spec)
    te_file = text_encoder_gb(c.te_dtype, spec) - te_anon if disk.text_encoder in (None, c.te_dtype) else 0.0
    te_kept = te_anon if c.te_kept else 0.0
    # the fp32 VAE (and CLIP for Wan2.1 I2V) live in RAM between uses
    base = RAM_BASE_GB[m.kind] + vae_weights_gb(spec) + clip_vision_gb(spec)
    video = video_host_gb(w, h, frames)
    vae_dev = vae_decode_gb(spec, w, h, frames, c.tiling)
    file = dit_file + te_file
    if m.kind == "cpu":
        # Everything runs in RAM; "one" expert means the other is read from its file at the switch.
        sample = _sample_dev(m, spec, c, act, disk) - _model_gb(spec, c.weight_dtype, disk) \
            - lora           # the weights and LoRAs themselves are counted above (dit_*)
        host = {"encode": base + dit_anon + max(te_kept, te_anon) + TEXT_ENCODER_CPU_WORK_GB,
                "sample": base + dit_anon + te_kept + sample,
                # base already holds the VAE's weights: decoding adds its activations and the video
                "decode": base + dit_anon + te_kept + vae_dev - vae_weights_gb(spec) + video}
        active = dit_file / experts_loaded
        return _Est({}, host, file, act, tokens, experts_loaded * mg if converting else 0.0,
                    cache={"encode": te_file, "sample": active})
    ctx = DEVICE_CONTEXT_GB[m.kind]
    dev = {"encode": ctx + max(te_anon + te_file + TEXT_ENCODER_WORK_GB if c.te_on_device else 0.0, vae_dev,
                               clip_vision_gb(spec)),
           "sample": _sample_dev(m, spec, c, act, disk),
           "decode": ctx + vae_dev}
    bb = _block_gb(spec, c.weight_dtype, disk) + _lora_gb(m, disk)[1]
    if m.kind == "cuda":
        # Swapped blocks are copied into pinned (page-locked, anonymous) memory; a converted copy is
        # replaced by its pinned one, a memory-mapped block is not.
        pinned = 0.0 if converting else experts_loaded * c.blocks_swapped * bb
        dit_ram = dit_anon + pinned
        file -= pinned          # a pinned block's file pages are not read again
    else:
        # MPS: unified memory; the active expert is counted in the device phase.
        dit_ram = dit_anon if two and c.experts == "both" else 0.0
    te_encode = 0.0 if c.te_on_device else te_anon + TEXT_ENCODER_CPU_WORK_GB
    host = {"load": base + dit_ram + te_kept,
            "encode": base + dit_ram + max(te_kept, te_encode, te_anon if c.te_on_device else 0.0),
            "sample": base + dit_ram + te_kept,
            "decode": base + dit_ram + te_kept + video}
    if m.kind == "mps":
        # unified memory: the device phases are RAM too, but the VAE moved to the device leaves its home
        host = {k: v + dev.get(k, 0.0) for k, v in host.items()}
        host["decode"] -= vae_weights_gb(spec)
    # On a GPU the weights are read from their files once, onto the device or into pinned memory; only
    # umT5 encoding on the CPU keeps reading its file.
    return _Est(dev, host, file, act, tokens, experts_loaded * mg if converting else 0.0,
                cache={"encode": 0.0 if c.te_on_device else te_file})


def _fits(m: _Machine, e: _Est, cached: bool = False) -> bool:
    """Fits: the device phases and the anonymous RAM. `cached`: also the file pages each phase reads, so
    nothing is re-read from disk while it runs (preferred; not required)."""
    if m.kind != "cpu" and e.peak_dev > m.vram_budget:
        return False
    if cached:
        return all(v + (e.cache or {}).get(k, 0.0) <= m.ram_budget for k, v in e.host.items())
    return e.peak_host <= m.ram_budget


def _why_not(m: _Machine, e: _Est) -> str:
    parts = []
    if m.kind != "cpu" and e.peak_dev > m.vram_budget:
        phase = max(e.dev, key=e.dev.get)
        mem = "GPU memory" if m.kind == "cuda" else "GPU working set"
        parts.append(f"needs {_gb(_up(e.peak_dev))} of {mem} while {_PHASE_WORDS[phase]}; "
                     f"{_gb(m.vram_budget)} usable")
    if e.peak_host > m.ram_budget:
        phase = max(e.host, key=e.host.get)
        parts.append(f"needs {_gb(_up(e.peak_host))} of RAM while {_PHASE_WORDS[phase]}; "
                     f"{_gb(m.ram_budget)} usable")
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
    sequential_copies: int = 0     # swapped-block copies per step had CFG stayed sequential (reasons)


def _auto_attention(m: _Machine) -> str:
    if m.kind == "cuda":
        for name in ("sage", "flash"):
            if name in m.attention:
                return name
    return "sdpa"


def _dtype_candidates(m: _Machine, ov: Overrides, disk: DiskWeights) -> list[str]:
    if ov.weight_dtype:
        return [ov.weight_dtype]
    if m.kind == "mps":
        return ["bf16"]                      # MPS has no float8 tensors
    if disk.dit in ("fp8", "gguf"):
        return [disk.dit]                    # a 16-bit copy of fp8 / GGUF values adds memory, not quality
    if m.kind == "cpu":
        # fp32 weights compute without a cast; a 16-bit file kept as it is stays memory-mapped (upcast per
        # layer), which is what lets a 5B fit where its fp32 copy (20 GB) cannot.
        keep = [disk.dit] if disk.dit in ("bf16", "fp16") else []
        return list(dict.fromkeys(["fp32", *keep, "bf16", "fp8"]))
    return [m.half, "fp8"]


def _te_candidates(m: _Machine, ov: Overrides, disk: DiskWeights) -> list[tuple[bool, str]]:
    te_place = ov.text_encoder if ov.text_encoder not in (None, "auto") else None
    # An fp8 file dequantized to 16 bit costs 11.4 GB and brings back no quality: keep it fp8.
    dtypes = ["fp8"] if disk.text_encoder == "fp8" else [m.te_half, "fp8"]
    cpu = [(False, d) for d in dtypes]
    if m.kind == "cpu":
        return cpu
    dev = [(True, d) for d in dtypes if m.kind == "cuda" or d != "fp8"]
    return {"gpu": dev, "cpu": cpu}.get(te_place, dev + cpu)


def _fewest_swapped(m: _Machine, spec: ModelSpec, c: _Choice, act: float, disk: DiskWeights) -> int:
    n = spec.arch.num_layers
    return next((k for k in range(n + 1)
                 if _sample_dev(m, spec, replace(c, blocks_swapped=k), act, disk) <= m.vram_budget), n)


def _solve(m: _Machine, spec: ModelSpec, w: int, h: int, frames: int, ov: Overrides,
           disk: DiskWeights, passes: int) -> _Solution:
    attention = ov.attention if ov.attention not in (None, "auto") else _auto_attention(m)
    te_opts = _te_candidates(m, ov, disk)
    exp_opts = [ov.experts_resident] if (ov.experts_resident and spec.experts == 2) else (
        ["both", "one"] if spec.experts == 2 else ["both"])
    tile_opts = [ov.vae_tiling] if ov.vae_tiling is not None else [False, True]
    tokens = spec.seq_len(frames, w, h)
    preferred = _dtype_candidates(m, ov, disk)
    last: _Solution | None = None
    # First a configuration whose weight files also stay in the page cache; failing that, the one with the
    # smallest files whose anonymous memory fits (it runs, re-reading weights from disk, and says so).
    smallest_files = sorted(preferred, key=lambda d: WEIGHT_BYTES.get(d, 0))
    for cached, candidates in ((True, preferred), (False, smallest_files)):
        found = _search(m, spec, w, h, frames, ov, disk, passes, candidates, cached, attention, te_opts,
                        exp_opts, tile_opts, tokens)
        if found.feasible:
            return found
        last = last or found
    return last


def _search(m, spec, w, h, frames, ov, disk, passes, candidates, cached, attention, te_opts, exp_opts,
            tile_opts, tokens) -> _Solution:
    last: _Solution | None = None
    for i, wd in enumerate(candidates):
        probe = _Choice(wd, 0, False, "bf16", False, exp_opts[-1], attention, True)
        if ov.blocks_swapped is not None:
            k = ov.blocks_swapped
        elif m.kind == "cuda":
            k = _fewest_swapped(m, spec, probe, _act(m, spec, tokens, attention, False), disk)
        else:
            k = 0
        # "Acceptable swap" for 16-bit weights is none at all: each swapped block crosses PCIe every
        # forward, and fp8 halves both the footprint and that traffic. Keeping this rule strict is also
        # what makes "more VRAM never means more blocks swapped" hold.
        if (m.kind == "cuda" and wd != "fp8" and ov.weight_dtype is None and ov.blocks_swapped is None
                and k > 0 and i < len(candidates) - 1):
            continue
        # CFG as one batch of 2: each swapped block crosses the bus once a step instead of twice, but the
        # doubled activations push more blocks out. Worth it when that is fewer copies and it fits.
        batch_k = None
        if m.kind == "cuda" and passes == 2 and k > 0:
            batch_k = k if ov.blocks_swapped is not None else _fewest_swapped(
                m, spec, replace(probe, cfg_batched=True), _act(m, spec, tokens, attention, True), disk)
            if batch_k >= 2 * k:
                batch_k = None
        for te_dev, te_dtype in te_opts:
            for exp in exp_opts:
                for tiling in tile_opts:
                    for kept in (True, False):
                        seq = _Choice(wd, k, te_dev, te_dtype, kept, exp, attention, tiling)
                        tries = ([replace(seq, blocks_swapped=batch_k, cfg_batched=True)] if batch_k else []) + [seq]
                        for c in tries:
                            e = _estimate(m, spec, w, h, frames, c, disk)
                            if _fits(m, e, cached):
                                return _Solution(c, e, True, "fits", sequential_copies=passes * k)
                            if last is None or not kept:
                                last = _Solution(c, e, False, _why_not(m, e), sequential_copies=passes * k)
    assert last is not None
    return last


def _max_frames(m: _Machine, spec: ModelSpec, w: int, h: int, ov: Overrides, disk: DiskWeights,
                passes: int) -> int:
    """Largest 4n+1 with a configuration that fits (feasibility only grows with fewer frames)."""
    def ok(n: int) -> bool:
        return _solve(m, spec, w, h, 4 * n + 1, ov, disk, passes).feasible
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
def validate_overrides(hw: Hardware, spec: ModelSpec, ov: Overrides) -> list[str]:
    """Refuse override values that cannot work on this machine or model, naming the field and the allowed
    range (the CLI and Settings call this when a value is set). Returns the forced field names."""
    return _validate_overrides(hw, _machine(hw), spec, ov)


def _validate_overrides(hw: Hardware, m: _Machine, spec: ModelSpec, ov: Overrides) -> list[str]:
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
    if ov.compile is not None:
        if not isinstance(ov.compile, bool):
            raise UserError("compile", f"{ov.compile!r} is not on or off", "use on or off")
        why = unavailable_reason(m.kind, m.triton) if ov.compile else None
        if why:
            raise UserError("compile", why, "use off (the blocks run uncompiled)")
        forced.append("compile")
    return forced


_FIX_WORDS = {
    "weight_dtype": lambda c: f"weight_dtype={c.weight_dtype}",
    "blocks_swapped": lambda c: f"blocks_swapped={c.blocks_swapped}",
    "text_encoder": lambda c: f"text_encoder={'gpu' if c.te_on_device else 'cpu'}",
    "attention": lambda c: f"attention={c.attention}",
    "vae_tiling": lambda c: f"vae_tiling={c.tiling}",
    "experts_resident": lambda c: f"experts_resident={c.experts}",
    "compile": lambda c: "compile=off",
}


def _unforce(ov: Overrides, name: str) -> Overrides:
    return replace(ov, **{name: None})


def plan(hw: Hardware, spec: ModelSpec, width: int, height: int, frames: int,
         overrides: Overrides | None = None, disk: DiskWeights | None = None, cfg_passes: int = 2,
         step_cache: str = "off") -> Plan:
    """Decide how this run fits this machine. Pure: the same inputs always give the same Plan.

    `disk` describes the files that will load (None: unknown, as for a simulated machine); `cfg_passes`
    is 1 when CFG is 1 (no unconditional forward), else 2.
    Raises UserError when an override is invalid or, being forced, cannot fit (with numbers and what
    would fit). A run that cannot fit for other reasons (too many frames, a model too big for the
    machine) returns a Plan whose `blocker` says why; wan_app.engine refuses it before loading.
    """
    ov = overrides or Overrides()
    disk = disk or DiskWeights()
    m = _machine(hw)
    forced = _validate_overrides(hw, m, spec, ov)
    sol = _solve(m, spec, width, height, frames, ov, disk, cfg_passes)
    if not sol.feasible and forced:
        _blame_override(m, spec, width, height, frames, ov, disk, cfg_passes, forced, sol)
    max_frames = _max_frames(m, spec, width, height, ov, disk, cfg_passes)
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
        experts_resident=c.experts, cfg_batched=c.cfg_batched,
        est_vram_gb=_up(e.peak_dev) if m.kind != "cpu" else 0.0, est_ram_gb=_up(e.peak_host),
        est_file_gb=_up(e.file), cfg_passes=cfg_passes, step_cache=step_cache,
        fp8_matmul=c.weight_dtype == "fp8" and m.scaled_mm, compiled=bool(ov.compile),
        vram_budget_gb=_round(m.vram_budget), ram_budget_gb=_round(m.ram_budget),
        forced=list(forced), text_encoder_kept=c.te_kept, blocker=blocker)
    p.reasons = _reasons(p, m, spec, width, height, frames, e, disk, sol.sequential_copies)
    return p


def _up(x: float) -> float:
    """Estimates are rounded up to 0.01 GB; reasons show them with one decimal (_gb)."""
    return math.ceil(x * 100 - 1e-9) / 100


def _round(x: float) -> float:
    return round(x, 2)


def _blame_override(m, spec, w, h, frames, ov, disk, passes, forced, sol) -> None:
    for name in forced:
        alt = _solve(m, spec, w, h, frames, _unforce(ov, name), disk, passes)
        if alt.feasible:
            raise UserError(name, f"forced {name}={getattr(ov, name)} cannot fit: {sol.why}",
                            f"{_FIX_WORDS[name](alt.choice)} fits (or let the planner choose)")
    free = _solve(m, spec, w, h, frames, Overrides(), disk, passes)
    if free.feasible:
        name = forced[0]
        raise UserError(name, f"the forced choices ({', '.join(forced)}) cannot fit together: {sol.why}",
                        "let the planner choose: " + ", ".join(_FIX_WORDS[f](free.choice) for f in forced))


def require_runnable(p: Plan) -> None:
    """Raise the plan's blocker as a UserError (the engine calls this before loading anything)."""
    if p.blocker:
        raise UserError(p.blocker["field"], p.blocker["problem"], p.blocker["fix"])


# ===================================================================================================
# Reasons: one line per decision, written from the final plan; numbers in GB with one decimal
# ===================================================================================================
def _gb(x: float) -> str:
    return f"{x:.1f} GB"


def _size_word(spec: ModelSpec) -> str:
    p = total_params(spec.arch, spec.clip)
    return f"{p / 1e9:.1f}B" if p >= 1e9 else f"{p / 1e6:.0f}M" if p >= 1e6 else f"{p / 1e3:.0f}K"


def _reasons(p: Plan, m: _Machine, spec, w, h, frames, e: _Est, disk: DiskWeights,
             sequential_copies: int) -> list[str]:
    a, n, k = spec.arch, p.blocks_total, p.blocks_swapped
    forced = p.forced
    tag = lambda name: " (forced by you)" if name in forced else ""  # noqa: E731
    r: list[str] = []
    if m.kind == "cuda":
        r.append(f"Device {m.device}: {m.gpu_name}, {m.vram_total:.1f} GB; {_gb(p.vram_budget_gb)} usable after "
                 f"a {_gb(m.vram_margin)} safety margin" + (f"; {m.extra_gpus} more GPU(s) not used"
                                                            if m.extra_gpus else ""))
        r.append(f"Compute in {m.compute}" + ("" if m.compute == "bf16" else
                 f": compute capability {m.cc[0]}.{m.cc[1]} has no bf16 (Wan may overflow in fp16 on rare prompts)"))
    elif m.kind == "mps":
        r.append(f"Device mps: Apple GPU sharing {m.ram_total:.1f} GB; {_gb(p.vram_budget_gb)} usable by the GPU "
                 f"(Metal working-set limit); no block swap (memory is already shared); compute in bf16")
    else:
        r.append("Device cpu: no GPU; compute in fp32; expect minutes per step at full size")
    r.append(f"RAM: {m.ram_total:.1f} GB; {_gb(p.ram_budget_gb)} usable after what the system uses and a margin")

    wd = p.weight_dtype
    half = "bf16" if m.kind == "cpu" else m.half
    mg_half, mg = model_gb(a, half, spec.clip), _model_gb(spec, wd, disk)
    what = f"{spec.name}: {_size_word(spec)} params" + (" per expert" if spec.experts == 2 else "") + ","
    swapped = f"{k} of {n} blocks swapped"
    if "weight_dtype" in forced:
        r.append(f"Weights in {wd} ({_gb(mg)}){tag('weight_dtype')}")
    elif disk.dit == "gguf" and wd == "gguf":
        r.append(f"Weights as the GGUF file stores them ({_gb(mg)}), dequantized one layer at a time to "
                 f"{m.compute}; a {half} copy would be {_gb(mg_half)}")
    elif disk.dit == "fp8" and wd == "fp8":
        r.append(f"Weights in fp8 ({_gb(mg)}): the files are fp8, so a {half} copy ({_gb(mg_half)}) would "
                 f"cost memory and bring back no quality")
    elif wd == "fp8":
        r.append(f"{what} in {half} is {_gb(mg_half)}; it does not fit this machine whole → fp8 ({_gb(mg)})"
                 + (f", {swapped}" if m.kind == "cuda" else ""))
    elif m.kind == "cpu" and wd != "fp32":
        r.append(f"{what} in fp32 would be {_gb(model_gb(a, 'fp32', spec.clip))} of RAM → kept in {wd} ({_gb(mg)}) and "
                 f"upcast one layer at a time")
    else:
        r.append(f"{what} in {wd} is {_gb(mg)}" + ("; it fits on the card whole" if m.kind != "cpu" and k == 0
                                                   else "; held in RAM" if m.kind == "cpu" else ""))
    if wd == "fp8" and p.fp8_matmul:
        r.append(f"fp8 weights multiply in fp8 with their scales (torch._scaled_mm runs on this GPU), the "
                 f"activations quantized per tensor; the result in {m.compute}")
    elif wd == "fp8":
        r.append(f"fp8 weights are upcast to {m.compute} one layer at a time: fp8 saves memory, not time")
    if e.converted:
        r.append(f"The files are {disk.dit}: loading converts them to {wd}, {_gb(e.converted)} of RAM that "
                 f"stays all run long (counted)")
    elif m.kind != "mps":
        r.append(f"The DiT files stay memory-mapped ({_gb(e.file - _te_file_gb(p, disk, spec))}): page cache the "
                 f"system may drop and re-read, not counted as RAM that must fit")

    lora, lora_block = _lora_gb(m, disk)
    if lora:
        r.append(f"LoRAs: {_gb(lora)} per expert in {m.compute}, applied at forward time (no merged copy of the "
                 f"weights); each block carries its own {lora_block * 1000:.0f} MB, also across the bus when "
                 f"swapped (counted in every estimate)")
    if m.kind == "cuda":
        bb = _block_gb(spec, wd, disk) + lora_block
        fixed = DEVICE_CONTEXT_GB["cuda"] + _nonblock_gb(spec, wd, disk)
        if k == 0:
            r.append(f"All {n} blocks resident ({_gb(n * bb)}){tag('blocks_swapped')}: CUDA context + "
                     f"non-block weights {_gb(fixed)} + activations {_gb(e.act)} ({e.tokens:,} tokens) fit "
                     f"in {_gb(p.vram_budget_gb)}")
        else:
            r.append(f"{swapped}{tag('blocks_swapped')} (the last {k}, {bb * 1000:.0f} MB each, "
                     f"{_gb(k * bb)} pinned in RAM): after CUDA context + non-block weights {_gb(fixed)}, "
                     f"activations {_gb(e.act)} ({e.tokens:,} tokens) and {SWAP_BUFFERS} in-flight swap "
                     f"buffers {_gb(SWAP_BUFFERS * bb)}, {n - k} blocks fit in {_gb(p.vram_budget_gb)}")
    if p.cfg_passes == 1:
        r.append("CFG 1: one forward per step (the unconditional pass and the negative prompt are skipped, "
                 "they would change nothing)")
    elif p.cfg_batched:
        r.append(f"CFG as one batch of 2: {k} block copies per step instead of {sequential_copies} (cond and "
                 f"uncond one after another); the doubled activations ({_gb(e.act)}) move "
                 f"{k - sequential_copies // 2} more blocks to RAM")
    elif m.kind == "cuda" and k > 0:
        r.append(f"CFG passes one after another ({sequential_copies} block copies per step): batching them "
                 f"would not save copies here or would not fit")

    if p.step_cache != "off":
        r.append(p.step_cache)
    te_gb = text_encoder_gb(p.text_encoder_dtype, spec)
    if p.text_encoder_device != "cpu":
        r.append(f"umT5-xxl text encoder on {m.device} in {p.text_encoder_dtype} ({_gb(te_gb)}) to encode the "
                 f"prompt, then off the GPU before sampling{tag('text_encoder')}")
    else:
        if "text_encoder" in forced:
            why = "forced by you"
        elif m.kind == "cpu":
            why = "no GPU"
        else:
            need = DEVICE_CONTEXT_GB[m.kind] + text_encoder_gb("fp8" if m.kind == "cuda" else "bf16", spec) \
                + TEXT_ENCODER_WORK_GB
            why = (f"even in fp8 it needs {_gb(need)} on the GPU, {_gb(p.vram_budget_gb)} usable"
                   if need > p.vram_budget_gb else "RAM or VRAM too tight to run it on the GPU")
        r.append(f"umT5-xxl text encoder on the CPU in {p.text_encoder_dtype} ({_gb(te_gb)}; {why}): prompt "
                 f"encoding is slower (tens of seconds), cached per prompt")
    r.append("Text encoder kept in RAM between prompts" if p.text_encoder_kept else
             "Text encoder released after encoding (not enough RAM to keep it); a new prompt reloads it")

    if spec.experts == 2:
        if p.experts_resident == "both":
            r.append(f"Both experts loaded ({_gb(2 * mg)}){tag('experts_resident')}; the GPU holds one at a time")
        else:
            why = "forced by you" if "experts_resident" in forced else "both do not fit in RAM"
            r.append(f"One expert at a time ({why}): the low-noise expert is read from its memory-mapped file "
                     f"at the switch (seconds to a minute, depending on the disk)")

    failures = dict(m.attention_failures)
    att = f"Attention: {p.attention_backend}{tag('attention')}"
    skipped = [f"{x} unavailable: {failures[x]}" for x in ("sage", "flash")
               if m.kind == "cuda" and x in failures and p.attention_backend != x]
    if m.kind == "cuda" and skipped and p.attention_backend in ("sdpa", "native"):
        att += " (" + "; ".join(skipped) + ")"
    if p.attention_backend in ("sdpa", "native") and not m.efficient_sdpa:
        att += ("; only torch's math kernel ran here: its O(tokens²) scores limit the frame count")
    r.append(att)
    if p.compiled:
        r.append("Transformer blocks compiled with torch.compile" + tag("compile")
                 + ": the first step at a new size compiles them (shown as its own phase); later steps reuse the "
                   "compiled code (its speed-up is not measured yet)")
    elif m.kind == "cuda":
        r.append("torch.compile off" + (tag("compile") if "compile" in forced else
                 (": not measured on a GPU yet (bench/gpu_check.sh); turn it on in Settings or with --compile"
                  if m.triton else ": Triton is not installed")))

    dec_full = vae_decode_gb(spec, w, h, frames, False)
    room = (p.vram_budget_gb - DEVICE_CONTEXT_GB[m.kind]) if m.kind != "cpu" else p.ram_budget_gb
    r.append(f"VAE decode at {w}x{h} needs ~{_gb(dec_full)} untiled (4 frames at a time, so not the frame "
             f"count); {_gb(room)} free after the DiT leaves → tiling {'on' if p.vae_tiling else 'off'}"
             + tag("vae_tiling") + "; the VAE stays in RAM except while it encodes or decodes")

    if p.blocker:
        r.append(f"Cannot run as asked: {p.blocker['problem']} — {p.blocker['fix']}")
    else:
        r.append(f"Frames: up to {p.max_frames} fit at {w}x{h} (asked {frames})")
    ram = f"RAM {_gb(p.est_ram_gb)} that must fit + {_gb(p.est_file_gb)} of mapped weight files"
    r.append(f"Estimated peak: VRAM {_gb(p.est_vram_gb)}, {ram}" if m.kind != "cpu"
             else f"Estimated peak: {ram}")
    if not p.blocker and p.est_ram_gb + p.est_file_gb > p.ram_budget_gb:
        r.append("The weight files do not all fit in RAM beside what must: the system re-reads parts of them "
                 "from disk (slower, not an error)")
    r.append(ESTIMATE_NOTE)
    return r


def _te_file_gb(p: Plan, disk: DiskWeights, spec) -> float:
    if disk.text_encoder not in (None, p.text_encoder_dtype):
        return 0.0
    return text_encoder_gb(p.text_encoder_dtype, spec) - text_encoder_anon_gb(p.text_encoder_dtype,
                                                                              disk.text_encoder, spec)


# ===================================================================================================
# After a CUDA out-of-memory error
# ===================================================================================================
def replan_after_oom(plan: Plan, hw: Hardware, spec: ModelSpec, width: int, height: int,
                     frames: int, disk: DiskWeights | None = None, cfg_passes: int | None = None) -> Plan | None:
    """The estimate was wrong: give more room. More swap (+50% of the resident blocks, at least 4), VAE
    tiling on, the text encoder on the CPU — whatever is left and fits in RAM. None when nothing is."""
    m = _machine(hw)
    disk = disk or DiskWeights()
    c = _Choice(plan.weight_dtype, plan.blocks_swapped, plan.text_encoder_device != "cpu",
                plan.text_encoder_dtype, bool(plan.text_encoder_kept), plan.experts_resident,
                plan.attention_backend, plan.vae_tiling, plan.cfg_batched)
    n, changes = plan.blocks_total, []

    def ram_ok(cand: _Choice) -> bool:
        return _estimate(m, spec, width, height, frames, cand, disk).peak_host <= m.ram_budget

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
        for dt in dict.fromkeys([c.te_dtype, "fp8"]):
            cand = replace(c, te_on_device=False, te_dtype=dt, te_kept=False)
            if ram_ok(cand):
                c = cand
                changes.append(f"text encoder moved to the CPU ({dt})")
                break
    if not changes:
        return None
    e = _estimate(m, spec, width, height, frames, c, disk)
    p = replace(plan, blocks_swapped=c.blocks_swapped, vae_tiling=c.tiling,
                text_encoder_device=m.device if c.te_on_device else "cpu", text_encoder_dtype=c.te_dtype,
                text_encoder_kept=c.te_kept,
                est_vram_gb=_up(e.peak_dev) if m.kind != "cpu" else 0.0, est_ram_gb=_up(e.peak_host),
                est_file_gb=_up(e.file), forced=list(plan.forced))
    copies = plan.cfg_passes * plan.blocks_swapped if not plan.cfg_batched else 2 * plan.blocks_swapped
    p.reasons = _reasons(p, m, spec, width, height, frames, e, disk, copies) + [
        "After an out-of-memory error: " + ", ".join(changes)]
    return p


# ===================================================================================================
# What `python app.py plan` prints
# ===================================================================================================
def explain(hw: Hardware, p: Plan) -> str:
    lines = ["Machine", *("  " + x for x in hw.describe().splitlines()), "", "Plan"]
    fields = [("device", p.device), ("compute dtype", p.compute_dtype), ("weights", p.weight_dtype),
              ("text encoder", f"{p.text_encoder_device} ({p.text_encoder_dtype})"),
              ("blocks swapped", f"{p.blocks_swapped} of {p.blocks_total}"),
              ("experts in RAM", p.experts_resident), ("attention", p.attention_backend),
              ("CFG", "one pass" if p.cfg_passes == 1 else "batch of 2" if p.cfg_batched else "two passes"),
              ("VAE tiling", "on" if p.vae_tiling else "off"), ("max frames", str(p.max_frames)),
              ("est. peak VRAM", _gb(p.est_vram_gb)), ("est. peak RAM", _gb(p.est_ram_gb)),
              ("mapped files", _gb(p.est_file_gb))]
    for name, value in fields:
        lines.append(f"  {name:<15} {value}" + ("  (forced)" if _FIELD_OF.get(name) in p.forced else ""))
    lines += ["", "Why"] + ["  - " + x for x in p.reasons]
    if p.blocker:
        lines += ["", f"Cannot run: {p.blocker['field']}: {p.blocker['problem']} — fix: {p.blocker['fix']}"]
    return "\n".join(lines)


_FIELD_OF = {"weights": "weight_dtype", "text encoder": "text_encoder", "blocks swapped": "blocks_swapped",
             "experts in RAM": "experts_resident", "attention": "attention", "VAE tiling": "vae_tiling"}
