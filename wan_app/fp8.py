"""fp8 weight storage for the Wan DiT: weights kept as float8_e4m3fn, upcast per layer at forward.

Two ways, both on the transformer blocks' linear layers only (they hold >99% of the bytes; embeddings,
norms, modulation tables and the output projection stay in the compute dtype, as diffusers'
`_skip_layerwise_casting_patterns` / `_keep_in_fp32_modules` for Wan ask):

- `store_fp8_scaled` (the default): one f32 scale per weight tensor, fp8 = w / scale with
  scale = amax / 448, so the largest weight lands on the top of the e4m3 range. Written by hand because
  diffusers has no scaled storage: its layerwise casting is a plain `.to(fp8)`, which puts the typical
  |w| ~ 0.01 of a 5120-wide layer in e4m3's subnormal range (below 2^-6) where only a few bits remain.
  ComfyUI's `*_fp8_scaled` files use the same scheme (real weight = fp8 weight · scale_weight).
- `store_fp8_cast`: diffusers' `enable_layerwise_casting` (plain casts), kept for comparison.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448.0


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, 0-d f32 scale) with scale = amax / 448: the largest weight lands on e4m3's top."""
    w = w.float()
    amax = w.abs().max()
    scale = (amax / FP8_MAX) if amax > 0 else torch.ones((), dtype=torch.float32)
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale.reshape(()).to(torch.float32)


class ScaledFp8Linear(nn.Module):
    """A Linear whose weight is stored as fp8 plus one f32 scale; upcast to the input dtype per call."""

    def __init__(self, linear: nn.Linear | None = None, *, in_features: int = 0, out_features: int = 0,
                 bias: bool = True):
        super().__init__()
        if linear is None:
            # An empty shell on the meta device, filled by load_state_dict(assign=True) straight from a
            # checkpoint's fp8 tensors (wan_app.checkpoints): no full-precision copy is ever made.
            self.in_features, self.out_features = in_features, out_features
            self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8, device="meta"),
                                       requires_grad=False)
            self.register_buffer("weight_scale", torch.empty((), dtype=torch.float32, device="meta"))
            self.bias = nn.Parameter(torch.empty(out_features, device="meta"), requires_grad=False) if bias else None
            return
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize(linear.weight.data)
        self.weight = nn.Parameter(q, requires_grad=False)
        self.register_buffer("weight_scale", scale)
        self.bias = linear.bias  # small; stays in the compute dtype

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        # e4m3 values are exact in bf16/fp16/f32, so the only rounding is the product with the scale.
        # Scaled in place on a fresh copy (copy=True: never into the stored, often memory-mapped, weight),
        # so a layer costs one full-size temporary instead of two.
        return self.weight.to(dtype, copy=True).mul_(self.weight_scale.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, storage=fp8+scale"


def store_fp8_scaled(transformer: nn.Module) -> int:
    """Replace every nn.Linear inside `transformer.blocks` by a ScaledFp8Linear; returns how many.

    Idempotent: layers that are already ScaledFp8Linear are left alone (a re-plan after an OOM calls
    this again on the same model).
    """
    replaced = 0
    for block in transformer.blocks:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, ScaledFp8Linear(child))
                    replaced += 1
    return replaced


def fp8_shells(root: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Replace every nn.Linear under `root` (except names containing a `skip` part) by an empty
    ScaledFp8Linear shell, before a checkpoint is assigned into the model; returns how many."""
    replaced = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and not any(part in name for part in skip):
                setattr(parent, name, ScaledFp8Linear(in_features=child.in_features,
                                                      out_features=child.out_features,
                                                      bias=child.bias is not None))
                replaced += 1
    return replaced


def store_fp8_cast(transformer, compute_dtype: torch.dtype) -> None:
    """diffusers' plain-cast fp8 storage: its default skip patterns plus Wan's own keep norms,
    embeddings, rope and the output projection out of fp8 (checked in tests/test_memory.py)."""
    transformer.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=compute_dtype)


def fp8_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.dtype == FP8)
