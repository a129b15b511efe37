"""fp8 weights multiplied in fp8 (torch._scaled_mm) instead of upcast per layer, where the GPU has it.

wan_app.fp8.ScaledFp8Linear keeps a weight as float8_e4m3fn plus one f32 scale and upcasts it to the
compute dtype at every call, then runs a 16-bit matmul. On Ada and Hopper (compute capability >= 8.9)
the tensor cores multiply fp8 directly: the input is quantized per tensor to e4m3 with its own scale
(amax / 448), and `torch._scaled_mm(x8, w8.T, scale_x, scale_w)` accumulates in fp32 and writes the
compute dtype. LightX2V measured +33 % on a 4090D and +11 % on an H100 for this (issue 11).

Why by hand: diffusers has no fp8-compute linear (its layerwise casting upcasts; torchao's float8
training recipes need torchao and re-quantize the weights). `_scaled_mm` is a private torch op, so it is
probed once per device like the attention kernels (wan_app.hardware) and every layer falls back to the
upcast, with one notice, if a call fails.

_scaled_mm's shape rules (torch/_meta_registrations.py `meta_scaled_mm`): the first operand row-major
with its inner size a multiple of 16, the second column-major with both sizes multiples of 16. Every
Wan linear already is (dims 1536 / 3072 / 5120, ffn 8960 / 13824 / 14336, text 4096, freq 256); other
sizes are zero-padded, which leaves the product unchanged.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .fp8 import FP8, FP8_MAX, ScaledFp8Linear

MIN_CAPABILITY = (8, 9)          # Ada (sm_89) and Hopper (sm_90): fp8 tensor cores
ALIGN = 16


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:200] if text else type(e).__name__


def _tiny_case(device) -> None:
    """One small product through _scaled_mm, checked against the same math in fp32."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(32, 64, generator=g)
    b = torch.randn(48, 64, generator=g)
    a8, sa = quantize_input(a.to(device))
    b8, sb = quantize_input(b.to(device))
    out = torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.float32)
    if device.type == "cuda":
        torch.cuda.synchronize(device)      # kernel failures surface here
    ref = emulated_scaled_mm(a8, b8.t(), sa, sb, torch.float32)
    err = (out.float() - ref).abs().max().item()
    if not err <= 1e-2 * ref.abs().max().item():
        raise RuntimeError(f"torch._scaled_mm gave wrong results (max error {err:.3g})")


def probe_scaled_mm(device, *, capability: tuple[int, int] | None = None,
                    run: Callable[[torch.device], None] | None = None) -> tuple[bool, str]:
    """(fp8 matmul runs here and is worth it, why). `capability` and `run` stand in for the GPU's
    compute capability and the probe call (tests)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False, (f"the device is {device.type}: fp8 matmul is only faster on NVIDIA GPUs with compute "
                       f"capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+ (Ada, Hopper); fp8 weights are "
                       "upcast per layer")
    if capability is None:
        if not torch.cuda.is_available():
            return False, "CUDA is not available to torch: fp8 weights are upcast per layer"
        capability = tuple(torch.cuda.get_device_capability(device))
    cc = f"{capability[0]}.{capability[1]}"
    if tuple(capability) < MIN_CAPABILITY:
        return False, (f"compute capability {cc} has no fp8 tensor cores (needs "
                       f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+): fp8 weights are upcast per layer")
    if not hasattr(torch, "_scaled_mm"):
        return False, f"this torch ({torch.__version__}) has no torch._scaled_mm: fp8 weights are upcast per layer"
    try:
        (run or _tiny_case)(device)
    except BaseException as e:  # noqa: BLE001 - a broken kernel may raise anything
        if isinstance(e, KeyboardInterrupt):
            raise
        return False, f"torch._scaled_mm failed here ({_why(e)}): fp8 weights are upcast per layer"
    return True, f"fp8 matmul: torch._scaled_mm runs on this GPU (compute capability {cc})"


@functools.lru_cache(maxsize=8)
def _cached_probe(device: str) -> tuple[bool, str]:
    return probe_scaled_mm(device)


def choose_fp8_path(device, probe: Callable[..., tuple[bool, str]] | None = None) -> tuple[str, str]:
    """("scaled_mm" or "upcast", the reason the plan shows). Probed once per device."""
    ok, why = (probe or (lambda d: _cached_probe(str(torch.device(d)))))(device)
    return ("scaled_mm" if ok else "upcast"), why


# ---- the math ---------------------------------------------------------------------------------------
def quantize_input(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x as e4m3, its 0-d f32 scale) per tensor: amax lands on 448, as the weights are stored.

    The division runs in x's dtype (a bf16 activation is not copied to fp32 first); the scale handed to
    _scaled_mm is that same rounded value, so quantize and dequantize agree exactly."""
    amax = x.detach().abs().amax().float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax)).to(x.dtype)
    q = (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale.float().reshape(())


def emulated_scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                       out_dtype: torch.dtype) -> torch.Tensor:
    """EMULATION of torch._scaled_mm in fp32 math (e4m3 values are exact in fp32): for tests and for CPUs
    whose torch has no _scaled_mm kernel. Never used to run a model on a GPU."""
    return ((a.float() @ b.float()) * (scale_a.float() * scale_b.float())).to(out_dtype)


def _pad(t: torch.Tensor, dim: int) -> torch.Tensor:
    extra = (-t.shape[dim]) % ALIGN
    if not extra:
        return t
    pad = [0, 0] * (t.ndim - 1 - dim) + [0, extra]
    if t.dtype == FP8:      # F.pad has no fp8 kernel; zeros are exact in e4m3
        return torch.cat([t, torch.zeros(*t.shape[:dim], extra, *t.shape[dim + 1:], dtype=FP8, device=t.device)], dim)
    return F.pad(t, pad)


def scaled_mm_linear(x: torch.Tensor, weight_fp8: torch.Tensor, scale: torch.Tensor,
                     bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
                     mm: Callable | None = None) -> torch.Tensor:
    """F.linear(x, weight_fp8 · scale, bias) with the product in fp8: x [..., K], weight [N, K] (e4m3),
    scale 0-d f32. `mm` is torch._scaled_mm (default) or `emulated_scaled_mm`."""
    mm = mm or torch._scaled_mm
    out_dtype = out_dtype or x.dtype
    n, k = weight_fp8.shape
    lead = x.shape[:-1]
    x8, sx = quantize_input(x.reshape(-1, k))
    x8, w8 = _pad(x8, 1), _pad(_pad(weight_fp8, 1), 0)     # K, then N, to multiples of 16
    y = mm(x8.contiguous(), w8.t(), scale_a=sx, scale_b=scale.float().reshape(()).to(x8.device),
           out_dtype=out_dtype)
    y = y[:, :n] if y.shape[1] != n else y
    if bias is not None:
        y = y + bias.to(out_dtype)
    return y.reshape(*lead, n)


# ---- the layer --------------------------------------------------------------------------------------
class ScaledMmLinear(nn.Module):
    """A ScaledFp8Linear whose product runs in fp8. It holds the very same weight, scale and bias tensors
    (no copy, and wan_app.memory / blockswap, which move those tensors, see no difference). If a call of
    `mm` fails, the layer upcasts from then on and `notify` is told once."""

    def __init__(self, layer: ScaledFp8Linear, notify: Callable[[str], None] | None = None,
                 mm: Callable | None = None, name: str = ""):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.weight = layer.weight
        self.register_buffer("weight_scale", layer.weight_scale)
        self.bias = layer.bias
        self._notify, self._mm, self._name = notify, mm, name
        self.failed: str | None = None

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype) * self.weight_scale.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed is None:
            try:
                return scaled_mm_linear(x, self.weight, self.weight_scale, self.bias, x.dtype, self._mm)
            except RuntimeError as e:
                self.failed = _why(e)
                if self._notify:
                    self._notify(f"fp8 matmul failed in {self._name or 'a layer'} ({self.failed}); "
                                 "that layer upcasts its fp8 weight from now on")
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, storage=fp8+scale, matmul=fp8"


def enable_scaled_mm(model: nn.Module, notify: Callable[[str], None] = print, device=None,
                     probe: Callable[..., tuple[bool, str]] | None = None, mm: Callable | None = None) -> int:
    """Every ScaledFp8Linear under `model` multiplies in fp8 if `device` (the plan's device; default:
    where the model's first parameter is) passes the probe; returns how many layers. When the probe
    fails nothing changes and `notify` gets the reason: the upcast path runs. `mm` replaces
    torch._scaled_mm (tests: `emulated_scaled_mm`)."""
    if device is None:
        device = next(model.parameters()).device
    path, why = choose_fp8_path(device, probe)
    if path != "scaled_mm":
        notify(why)
        return 0
    n = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is ScaledFp8Linear:
                full = f"{parent_name}.{name}" if parent_name else name
                setattr(parent, name, ScaledMmLinear(child, notify, mm, full))
                n += 1
    return n


def disable_scaled_mm(model: nn.Module) -> int:
    """Back to upcasting ScaledFp8Linear layers (same tensors); returns how many."""
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is ScaledMmLinear:
                back = ScaledFp8Linear(in_features=child.in_features, out_features=child.out_features,
                                       bias=child.bias is not None)
                back.weight = child.weight
                back.weight_scale = child.weight_scale
                back.bias = child.bias
                setattr(parent, name, back)
                n += 1
    return n
