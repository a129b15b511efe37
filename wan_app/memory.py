"""Carry out a memory Plan on loaded Components: dtypes and fp8 storage, partial block swap, attention
backend on every transformer, VAE tiling, text encoder placement and A14B expert moves.

The planner chooses the numbers; this module only executes them. Engine flow:

    placement = apply_plan(plan, components, notify, load_expert=...)
    dev = placement.text_encoder_device(); ...encode...; placement.text_encoder_done()
    placement.activate("only" | "high"); ...steps...; placement.activate("low"); ...steps...
    placement.before_decode(); ...vae decode...
    # after a CUDA OOM: placement.release(); plan = planner.plan(...more swap...); apply_plan(...)

Weights live in CPU "home" tensors for the life of the Placement (as loaded: memory-mapped where the
loader did that; pinned only for swapped blocks, which cross PCIe every step). Moving a model onto the
device copies home -> device; moving it off just points the parameters back at home, so a move out
costs no copy and no new RAM. Resident parts are deliberately not pinned: an A14B expert is moved once
per run, while pinning 14–28 GB makes that RAM unswappable (Wan2GP's "RAM exhaustion from pinning").
"""
from __future__ import annotations

import gc
import logging
import time
from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from .blockswap import BlockSwapper
from .compile_blocks import compile_blocks, uncompile_blocks
from .errors import UserError
from .fp8 import store_fp8_scaled
from .plan_types import Plan

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# plan name -> diffusers AttentionBackendName value; "sdpa" and "native" are both torch SDPA.
DIFFUSERS_BACKEND = {"sage": "sage", "flash": "flash", "sdpa": "native", "native": "native"}
FALLBACK = {"auto": ["sage", "flash", "sdpa"], "sage": ["sage", "flash", "sdpa"],
            "flash": ["flash", "sdpa"], "sdpa": ["sdpa"], "native": ["native"]}
WHICH = ("only", "high", "low")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Homes:
    """A module's tensors (minus those a BlockSwapper owns) with their CPU home copies."""

    def __init__(self, module: nn.Module, exclude: set[int] = frozenset()):
        self.pairs = []
        for t in list(module.parameters()) + list(module.buffers()):
            if id(t) in exclude:
                continue
            home = t.data if t.device.type == "cpu" else t.data.to("cpu")
            t.data = home
            self.pairs.append((t, home))
        self.on_device = False

    def onload(self, device: torch.device) -> None:
        if device.type != "cpu":
            for t, home in self.pairs:
                t.data = home.to(device, non_blocking=home.is_pinned())
        self.on_device = True

    def offload(self) -> None:
        for t, home in self.pairs:
            t.data = home
        self.on_device = False


def _cast_params(module: nn.Module, dtype: torch.dtype, keep_fp32: list[str]) -> None:
    # Parameters only: buffers such as the rope tables are float64 on purpose and must stay so.
    for mod_name, mod in module.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if not p.is_floating_point() or p.dtype == torch.float8_e4m3fn:
                continue
            want = torch.float32 if any(k in full for k in keep_fp32) and dtype != torch.float32 else dtype
            if p.dtype != want:
                p.data = p.data.to(want)


def upcast_on_forward(model: nn.Module, compute: torch.dtype) -> list:
    """Weights stored in 16 bit run in `compute` (fp32 on a CPU): each layer's parameters are cast just
    before its forward and pointed back at their storage after it.

    By hand because diffusers' enable_layerwise_casting casts back with `module.to(storage)`, which puts
    *new* tensors in place of the stored ones: after the first step every memory-mapped weight has become
    an anonymous copy (a 5B in fp16: 10 GB of RAM the planner counts as file pages)."""
    handles = []
    for mod in model.modules():
        params = [p for p in mod.parameters(recurse=False) if p.is_floating_point() and p.dtype != compute
                  and p.dtype != torch.float8_e4m3fn]
        if not params:
            continue

        def pre(module, args, params=params):
            module._stored = [p.data for p in params]
            for p in params:
                p.data = p.data.to(compute)

        def post(module, args, output, params=params):
            for p, stored in zip(params, module._stored):
                p.data = stored
            module._stored = None
        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    return handles


class _Transformer:
    """One DiT prepared for a plan: cast, fp8, swap hooks, homes for the resident part."""

    def __init__(self, model, plan: Plan, device: torch.device, notify):
        self.model = model
        compute = TORCH_DTYPES[plan.compute_dtype]
        keep = list(getattr(model, "_keep_in_fp32_modules", None) or [])
        # fp8 and GGUF keep their linears as stored (upcast / dequantized per layer); the rest computes as is
        storage = compute if plan.weight_dtype in ("fp8", "gguf") else TORCH_DTYPES[plan.weight_dtype]
        _cast_params(model, storage, keep)
        if plan.weight_dtype == "fp8":
            store_fp8_scaled(model)
            if plan.fp8_matmul:
                from .fp8_matmul import enable_scaled_mm
                enable_scaled_mm(model, notify, device)
        elif storage != compute:
            self._upcast = upcast_on_forward(model, compute)
        self.swapper = BlockSwapper(model, model.blocks, plan.blocks_swapped, device, notify).install()
        owned = {id(t) for i in self.swapper.swapped_indices
                 for t in list(model.blocks[i].parameters()) + list(model.blocks[i].buffers())}
        self.homes = _Homes(model, exclude=owned)
        if plan.compiled:          # last: the swap hooks stay outside the compiled forwards
            compile_blocks(model)

    _upcast: list = []

    def release(self) -> None:
        self.swapper.remove()
        for h in self._upcast:
            h.remove()
        uncompile_blocks(self.model)
        self.homes.offload()


class Placement:
    def __init__(self, plan: Plan, components, notify, load_expert):
        self.plan = plan
        self.components = components
        self.device = torch.device(plan.device)
        self._notify = notify
        self._load_expert = load_expert
        self._prepared: dict[str, _Transformer | None] = {}
        self._active: str | None = None
        self._te_homes: _Homes | None = None
        self.moves: list[tuple[str, str]] = []      # ("in"/"out"/"drop"/"load", which): the order moves happened
        self.attention_backend = plan.attention_backend
        self._global_backend_before = None

    # ---- transformers -----------------------------------------------------------------------------
    def _attr(self, which: str) -> str:
        return "transformer_2" if which == "low" else "transformer"

    def _prepare(self, which: str) -> None:
        model = getattr(self.components, self._attr(which))
        self._prepared[which] = _Transformer(model, self.plan, self.device, self._notify)
        self.attention_backend = choose_attention(model, self.plan.attention_backend, self.device,
                                                  self._notify, self.plan.compute_dtype)

    def transformer(self, which: str = "only"):
        if which not in WHICH:
            raise ValueError(f"which must be one of {WHICH}, not {which!r}")
        return getattr(self.components, self._attr(which))

    def activate(self, which: str) -> float:
        """Make one transformer ready on the device; for A14B the other expert leaves VRAM first."""
        if which not in self._prepared:
            raise ValueError(f"which must be one of {tuple(self._prepared)} for this model, not {which!r}")
        prep = self._prepared[which]
        if which == self._active and prep is not None and prep.homes.on_device:
            return 0.0
        start = time.perf_counter()
        for other, prep in list(self._prepared.items()):
            if other != which and prep is not None and prep.homes.on_device:
                prep.homes.offload()
                self.moves.append(("out", other))
            if other != which and prep is not None and self.plan.experts_resident == "one" and other != "only":
                prep.release()
                self._prepared[other] = None
                setattr(self.components, self._attr(other), None)
                del prep
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.moves.append(("drop", other))
        if self._prepared.get(which) is None:
            if getattr(self.components, self._attr(which)) is None:
                if self._load_expert is None:
                    raise RuntimeError(f"the {which} expert was dropped and no load_expert callback was given")
                setattr(self.components, self._attr(which), self._load_expert(which))
                self.moves.append(("load", which))
            self._prepare(which)
        self._prepared[which].homes.onload(self.device)
        _sync(self.device)
        self.moves.append(("in", which))
        self._active = which
        return time.perf_counter() - start

    def before_decode(self) -> None:
        """Every DiT out of VRAM so the VAE decode has the room."""
        for which, prep in self._prepared.items():
            if prep is not None and prep.homes.on_device:
                prep.homes.offload()
                self.moves.append(("out", which))
        self._active = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- text encoder -----------------------------------------------------------------------------
    def text_encoder_device(self) -> torch.device:
        """Where to run umT5; brings it back onto the GPU if text_encoder_done() sent it away."""
        te = self.components.text_encoder
        if self.plan.text_encoder_device == "cpu" or self.device.type == "cpu":
            return torch.device("cpu")
        if self._te_homes is None:
            self._te_homes = _Homes(te)
        if not self._te_homes.on_device:
            self.before_decode()          # the DiT is never in VRAM together with umT5 (11 GB in bf16)
            self._te_homes.onload(self.device)
        return self.device

    def text_encoder_done(self) -> None:
        """After encoding: a GPU-placed text encoder leaves VRAM before the DiT arrives."""
        if self._te_homes is not None and self._te_homes.on_device:
            self._te_homes.offload()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def block_transfers(self) -> int:
        """Swapped-block loads issued so far, over all experts (tests and benchmarks)."""
        return sum(t.swapper.transfers for t in self._prepared.values() if t is not None and t.swapper)

    def drop_text_encoder(self) -> None:
        """The plan cannot keep umT5 in RAM between prompts: free it. The engine reloads it from its
        memory-mapped file when a new prompt needs encoding (embeddings are cached per prompt)."""
        self.text_encoder_done()
        self._te_homes = None
        self.components.text_encoder = None

    # ---- undo -------------------------------------------------------------------------------------
    def release(self) -> None:
        """Hooks off, all weights back on CPU, attention backend reset, VAE tiling off; fp8 storage stays
        (precision cannot be restored — re-load the model if the next plan wants more than fp8)."""
        for prep in self._prepared.values():
            if prep is not None:
                prep.release()
        for which in self._prepared:
            model = getattr(self.components, self._attr(which))
            if model is not None:
                with _quiet_diffusers():
                    model.reset_attention_backend()
        self._prepared.clear()
        self._active = None
        self.text_encoder_done()
        self._te_homes = None
        vae = self.components.vae
        if vae is not None:
            vae.disable_tiling()
            vae.to("cpu")
        _set_global_backend(self._global_backend_before)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def apply_plan(plan: Plan, components, notify: Callable[[str], None] = print,
               load_expert: Callable[[str], nn.Module] | None = None) -> Placement:
    """Prepare every model for `plan`; DiT weights reach the device on Placement.activate()."""
    _check(plan, components, load_expert)
    placement = Placement(plan, components, notify, load_expert)
    placement._global_backend_before = _get_global_backend()
    spec = getattr(components, "spec", None)
    a14b = components.transformer_2 is not None or getattr(spec, "experts", 1) == 2
    names = ("high", "low") if a14b else ("only",)
    for which in names:
        if getattr(components, placement._attr(which)) is not None:
            placement._prepare(which)
        else:
            placement._prepared[which] = None
    # set_attention_backend also changes diffusers' global default; put it back so other models keep
    # theirs — ours carry the choice on every processor.
    _set_global_backend(placement._global_backend_before)
    vae = components.vae
    if vae is not None:
        # The VAE stays on the CPU; wan_app.vae_codec brings it to the device only to encode or decode.
        vae.enable_tiling() if plan.vae_tiling else vae.disable_tiling()
    te_dtype = TORCH_DTYPES.get(plan.text_encoder_dtype)
    if components.text_encoder is not None and te_dtype is not None:
        components.text_encoder.to(dtype=te_dtype)
    return placement


def _check(plan: Plan, components, load_expert) -> None:
    if plan.compute_dtype not in TORCH_DTYPES:
        raise UserError("compute_dtype", f"{plan.compute_dtype!r} is not a compute dtype", "use bf16, fp16 or fp32")
    if plan.weight_dtype not in (*TORCH_DTYPES, "fp8", "gguf"):
        raise UserError("weight_dtype", f"{plan.weight_dtype!r} is unknown", "use fp32, bf16, fp16 or fp8")
    n = len(components.transformer.blocks) if components.transformer is not None else plan.blocks_total
    if not 0 <= plan.blocks_swapped <= n:
        raise UserError("blocks_swapped", f"{plan.blocks_swapped} is outside 0..{n}", f"choose 0 to {n}")
    if plan.attention_backend not in FALLBACK:
        raise UserError("attention", f"{plan.attention_backend!r} is unknown", "use sage, flash, sdpa or native")
    if components.transformer is None and load_expert is None:
        raise UserError("model", "no transformer was loaded", "load the model before applying a plan")


# ---- attention --------------------------------------------------------------------------------------
def _get_global_backend():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    return _AttentionBackendRegistry._active_backend


def _set_global_backend(backend) -> None:
    if backend is not None:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry
        _AttentionBackendRegistry.set_active_backend(backend)


@contextmanager
def _quiet_diffusers():
    # set/reset_attention_backend log an "experimental feature" warning on every call.
    log = logging.getLogger("diffusers.models.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _probe(backend: str, heads: int, head_dim: int, device: torch.device, dtype: torch.dtype) -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn
    q = torch.randn(1, 16, heads, head_dim, device=device, dtype=dtype)
    out = dispatch_attention_fn(q, q, q, backend=AttentionBackendName(backend))
    if not torch.isfinite(out).all():
        raise RuntimeError("probe produced non-finite values")


def choose_attention(model, wanted: str, device: torch.device, notify, compute_dtype: str = "bf16") -> str:
    """Set the first working backend of the fallback chain on every attention processor of `model`.

    diffusers' `set_attention_backend` writes the backend onto each processor of that model *and* into a
    process-wide default that every model without its own setting follows; so it is called on each
    transformer explicitly (A14B has two) and the global default is restored by apply_plan.
    """
    chain = FALLBACK[wanted]
    heads, head_dim = model.config.num_attention_heads, model.config.attention_head_dim
    dtype = TORCH_DTYPES[compute_dtype]
    for n, name in enumerate(chain):
        try:
            with _quiet_diffusers():
                model.set_attention_backend(DIFFUSERS_BACKEND[name])
            _probe(DIFFUSERS_BACKEND[name], heads, head_dim, device, dtype)
            return name
        except Exception as e:  # noqa: BLE001 — any failure means "try the next kernel"
            if n + 1 == len(chain):
                with _quiet_diffusers():
                    model.reset_attention_backend()
                notify(f"attention: {name} unavailable ({_why(e)}), using torch default")
                return "native"
            notify(f"attention: {name} unavailable ({_why(e)}), using {chain[n + 1]}")
    return "native"


def _why(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:160]
