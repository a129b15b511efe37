"""Apply LoRAs to a loaded WanTransformer3DModel at forward time, on every weight path.

Every linear layer a LoRA touches (nn.Linear, or wan_app.fp8.ScaledFp8Linear) is wrapped by LoraLinear,
which adds Σ s·(α/r)·(x·downᵀ)·upᵀ (+ s·x·diffᵀ, + s·diff_b) to the layer's own output. So:
- bf16 / fp16 / fp32 weights and fp8 weights (upcast per layer by ScaledFp8Linear, or by diffusers'
  layerwise casting) all work unchanged: the base weight is never copied, the update costs two thin
  matmuls (bench/lora_bench.py measures it against merged weights);
- the LoRA tensors are buffers of the block's own modules, so a BlockSwapper moves them with the block
  and `LoraHandle.block_bytes` sizes its slots; every block gets the same buffers (zero-padded where a
  LoRA skips a block), because the swapper needs swapped blocks of one shape;
- the wrapped layer stays a child (`.lora_base`), so fp8.store_fp8_scaled applied afterwards still
  finds and converts it.
Full deltas of the small non-linear parameters (norm weights and biases, the modulation tables, the
patch embedding) are added to those parameters instead — a few MB at most — and put back by remove().

Order with wan_app.memory: attach() before apply_plan() (or in its load_expert callback for an A14B
expert loaded later), and remove() after Placement.release(): a BlockSwapper records each block's
tensors when it installs.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..fp8 import ScaledFp8Linear
from .weights import LoraWeights, target_shapes

STRENGTH_RANGE = (-4.0, 4.0)   # the bound; ComfyUI's LoraLoader slider allows ±100, Wan2GP ±10


def check_strength(value, field: str = "lora strength") -> float:
    """A float within −4…4, or UserError naming the field."""
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise UserError(field, f"{value!r} is not a number", "give a strength from -4 to 4, e.g. 1.0") from None
    lo, hi = STRENGTH_RANGE
    if not lo <= s <= hi:     # NaN fails this too
        raise UserError(field, f"{value!r} is outside {lo:g}…{hi:g}", "give a strength from -4 to 4, e.g. 1.0")
    return s


class LoraLinear(nn.Module):
    """A linear layer plus its LoRA updates, added to its output at forward time."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.lora_base = base
        # Buffers (not parameters: memory._cast_params must not cast them, nothing trains them), not
        # persistent (they are no part of the model's checkpoint). None until attach() fills them:
        # lora_down [R, in] stacked over LoRAs; lora_up [out, R] with columns pre-scaled by s·α/r;
        # lora_diff [out, in] = Σ s·diff; lora_diff_b [out] = Σ s·diff_b.
        for name in ("lora_down", "lora_up", "lora_diff", "lora_diff_b"):
            self.register_buffer(name, None, persistent=False)

    @property
    def in_features(self) -> int:
        return self.lora_base.in_features

    @property
    def out_features(self) -> int:
        return self.lora_base.out_features

    @property
    def weight(self):
        return self.lora_base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lora_base(x)
        if self.lora_down is not None:
            y = y + F.linear(F.linear(x, self.lora_down.to(x.dtype)), self.lora_up.to(x.dtype))
        if self.lora_diff is not None:
            y = y + F.linear(x, self.lora_diff.to(x.dtype))
        if self.lora_diff_b is not None:
            y = y + self.lora_diff_b.to(y.dtype)
        return y

    def lora_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.lora_down, self.lora_up, self.lora_diff,
                                                          self.lora_diff_b) if t is not None)


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, ScaledFp8Linear))


@dataclass
class LoraHandle:
    """What attach() did; remove() undoes it."""
    model: nn.Module
    wrapped: dict[str, LoraLinear] = field(default_factory=dict)       # module name -> wrapper
    merged: dict[str, torch.Tensor] = field(default_factory=dict)       # parameter -> its original tensor
    names: list[str] = field(default_factory=list)                      # the LoRAs attached, in order
    notices: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        """LoRA tensors now held by the model (what resident VRAM / RAM must add)."""
        return sum(w.lora_bytes() for w in self.wrapped.values())

    @property
    def block_bytes(self) -> int:
        """LoRA bytes inside one transformer block (equal for all blocks): add to a swap slot's size."""
        per = defaultdict(int)
        for name, w in self.wrapped.items():
            if name.startswith("blocks."):
                per[int(name.split(".")[1])] += w.lora_bytes()
        return max(per.values(), default=0)

    def remove(self) -> None:
        for name, w in list(self.wrapped.items()):
            parent, leaf = _parent(self.model, name)
            setattr(parent, leaf, w.lora_base)
        for pname, original in self.merged.items():
            p = self.model.get_parameter(pname)
            p.data = original.to(device=p.device, dtype=p.dtype)
        self.wrapped.clear()
        self.merged.clear()


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, leaf = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), leaf


def attach(transformer: nn.Module, loras: Sequence[tuple[LoraWeights, float]],
           dtype: torch.dtype | None = None) -> LoraHandle:
    """Apply each (LoRA, strength) to `transformer`; strength 0 leaves a LoRA out entirely. `dtype`: the
    LoRA tensors' storage (default: the dtype the model computes in)."""
    if any(b._forward_pre_hooks or b._forward_hooks for b in transformer.blocks):
        raise RuntimeError("attach LoRAs before the memory plan is applied: a BlockSwapper records each block's "
                           "tensors when it installs (see wan_app/lora/apply.py)")
    if any(isinstance(m, LoraLinear) for m in transformer.modules()):
        raise RuntimeError("this transformer already carries LoRAs: remove() them first, then attach all at once")
    handle = LoraHandle(transformer)
    loras = [(w, check_strength(s)) for w, s in loras]
    loras = [(w, s) for w, s in loras if s != 0.0]
    if not loras:
        return handle
    dtype = dtype or _compute_dtype(transformer)
    shapes = target_shapes(transformer)
    pairs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)   # module -> (down, s·up)
    full: dict[str, torch.Tensor] = {}                                              # parameter -> Σ s·delta
    for w, s in loras:
        handle.names.append(w.name)
        if w.notice():
            handle.notices.append(w.notice())
        for module, lr in w.low_rank.items():
            if shapes.get(f"{module}.weight") != (lr.up.shape[0], lr.down.shape[1]):
                raise ValueError(f"LoRA {w.name} was loaded for another model ({module})")
            pairs[module].append((lr.down.float(), lr.up.float() * (s * lr.scale)))
        for param, d in w.deltas.items():
            if shapes.get(param) != tuple(d.shape):
                raise ValueError(f"LoRA {w.name} was loaded for another model ({param})")
            full[param] = full.get(param, 0) + d.float() * s
    linear_deltas: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for param, d in full.items():
        module, leaf = param.rsplit(".", 1) if "." in param else ("", param)
        if module and leaf in ("weight", "bias") and _is_linear(transformer.get_submodule(module)):
            linear_deltas[module]["diff" if leaf == "weight" else "diff_b"] = d
        else:
            _merge_small(transformer, param, d, handle)
    _wrap_all(transformer, pairs, linear_deltas, dtype, handle)
    return handle


def _compute_dtype(model: nn.Module) -> torch.dtype:
    """The most common 16/32-bit parameter dtype (an fp8 model computes in its non-fp8 dtype)."""
    count = defaultdict(int)
    for p in model.parameters():
        if p.is_floating_point() and p.dtype.itemsize >= 2:
            count[p.dtype] += p.numel()
    return max(count, key=count.get) if count else torch.bfloat16


def _merge_small(model: nn.Module, param: str, delta: torch.Tensor, handle: LoraHandle) -> None:
    p = model.get_parameter(param)
    handle.merged[param] = p.data
    # A new tensor, not an in-place add: the old one may be a read-only memory-mapped file page.
    p.data = (p.data.float() + delta.to(p.device)).to(p.dtype)


def _wrap_all(model, pairs, linear_deltas, dtype, handle: LoraHandle) -> None:
    modules = set(pairs) | set(linear_deltas)

    def slot(name: str) -> str:          # "blocks.3.attn1.to_q" -> "attn1.to_q": one layout for every block
        parts = name.split(".")
        return ".".join(parts[2:]) if parts[0] == "blocks" else name

    rank = defaultdict(int)              # per slot: the largest stacked rank of any block
    kinds = defaultdict(set)
    for name in modules:
        rank[slot(name)] = max(rank[slot(name)], sum(d.shape[0] for d, _ in pairs.get(name, [])))
        kinds[slot(name)] |= set(linear_deltas.get(name, {}))
    if any(n.startswith("blocks.") for n in modules):
        slots = {slot(n) for n in modules if n.startswith("blocks.")}
        modules |= {f"blocks.{i}.{s}" for i in range(len(model.blocks)) for s in slots}
    for name in sorted(modules):
        base = model.get_submodule(name)
        if not _is_linear(base):
            raise UserError("lora", f"{name} is not a linear layer ({type(base).__name__})",
                            "this LoRA targets a layer the app cannot apply it to")
        dev = base.weight.device
        w = LoraLinear(base)
        R = rank[slot(name)]
        if R:
            got = pairs.get(name, [])
            down = torch.zeros(R, base.in_features, dtype=torch.float32)
            up = torch.zeros(base.out_features, R, dtype=torch.float32)
            at = 0
            for d, u in got:
                down[at:at + d.shape[0]] = d
                up[:, at:at + d.shape[0]] = u
                at += d.shape[0]
            w.lora_down, w.lora_up = down.to(dev, dtype), up.to(dev, dtype)
        for kind in sorted(kinds[slot(name)]):
            shape = (base.out_features, base.in_features) if kind == "diff" else (base.out_features,)
            d = linear_deltas.get(name, {}).get(kind, torch.zeros(shape))
            setattr(w, f"lora_{kind}", d.to(dev, dtype))
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, w)
        handle.wrapped[name] = w
