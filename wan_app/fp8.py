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


class ScaledFp8Linear(nn.Module):
    """A Linear whose weight is stored as fp8 plus one f32 scale; upcast to the input dtype per call."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.data.float()
        amax = w.abs().max()
        scale = (amax / FP8_MAX) if amax > 0 else torch.ones((), dtype=torch.float32)
        self.weight = nn.Parameter((w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), requires_grad=False)
        self.register_buffer("weight_scale", scale.reshape(()).to(torch.float32))
        self.bias = linear.bias  # small; stays in the compute dtype

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        # e4m3 values are exact in bf16/fp16/f32, so the only rounding is the product with the scale.
        return self.weight.to(dtype) * self.weight_scale.to(dtype)

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


def store_fp8_cast(transformer, compute_dtype: torch.dtype) -> None:
    """diffusers' plain-cast fp8 storage: its default skip patterns plus Wan's own keep norms,
    embeddings, rope and the output projection out of fp8 (checked in tests/test_memory.py)."""
    transformer.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=compute_dtype)


def fp8_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.dtype == FP8)
