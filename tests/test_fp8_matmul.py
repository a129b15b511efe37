"""fp8 matmul: the probe and the choice of path (no GPU needed), and the math of quantize → fp8 product
→ dequantize against fp32. On this CPU torch has its own _scaled_mm kernel; `emulated_scaled_mm` is
the labelled fp32 emulation of it. Speed is measured by bench/gpu_check.sh on a GPU, not here."""
import pytest
import torch
import torch.nn.functional as F

from wan_app import fp8_matmul as fm
from wan_app.fp8 import FP8, ScaledFp8Linear, quantize, store_fp8_scaled
from wan_app.tiny import reference_components

HAS_CPU_KERNEL = True
try:
    torch._scaled_mm(torch.zeros(16, 16, dtype=FP8), torch.zeros(16, 16, dtype=FP8).t(),
                     scale_a=torch.tensor(1.0), scale_b=torch.tensor(1.0), out_dtype=torch.float32)
except (RuntimeError, NotImplementedError, AttributeError):
    HAS_CPU_KERNEL = False
KERNELS = [pytest.param(fm.emulated_scaled_mm, id="fp32-emulation"),
           pytest.param(None, id="torch-cpu-kernel",
                        marks=pytest.mark.skipif(not HAS_CPU_KERNEL, reason="this torch has no CPU _scaled_mm"))]


# ---- probe and choice ---------------------------------------------------------------------------------
def test_on_a_cpu_the_probe_says_no_and_the_plan_upcasts():
    ok, why = fm.probe_scaled_mm("cpu")
    assert not ok and "cpu" in why and "8.9" in why and "upcast" in why
    assert fm.choose_fp8_path("cpu") == ("upcast", why)


def test_a_gpu_older_than_ada_upcasts_with_its_compute_capability_named():
    ok, why = fm.probe_scaled_mm("cuda:0", capability=(8, 6), run=lambda d: None)
    assert not ok and "8.6" in why and "8.9" in why


def test_a_failing_probe_call_falls_back_with_the_error_in_the_reason():
    def broken(device):
        raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED when calling cublasLtMatmul")
    ok, why = fm.probe_scaled_mm("cuda:0", capability=(9, 0), run=broken)
    assert not ok and "CUBLAS_STATUS_NOT_SUPPORTED" in why and "upcast" in why
    assert fm.choose_fp8_path("cuda:0", probe=lambda d: fm.probe_scaled_mm(d, capability=(9, 0), run=broken))[0] == "upcast"


def test_hopper_with_a_working_kernel_multiplies_in_fp8():
    ok, why = fm.probe_scaled_mm("cuda:0", capability=(9, 0), run=lambda d: None)
    assert ok and "9.0" in why
    assert fm.choose_fp8_path("cuda:0", probe=lambda d: (ok, why)) == ("scaled_mm", why)


def test_the_probe_case_itself_passes_where_a_kernel_exists():
    if not HAS_CPU_KERNEL:
        pytest.skip("this torch has no CPU _scaled_mm to run the probe case on")
    fm._tiny_case(torch.device("cpu"))     # the check a GPU runs at start, on the CPU kernel


# ---- the math -----------------------------------------------------------------------------------------
def test_inputs_are_quantized_per_tensor_with_amax_on_448():
    x = torch.randn(64, 32) * 3
    q, s = fm.quantize_input(x)
    assert q.dtype == FP8 and s.dtype == torch.float32 and s.ndim == 0
    assert q.float().abs().max().item() == 448.0
    back = q.float() * s
    # e4m3 keeps 3 mantissa bits: each value is rounded by at most 1/16 of itself (normal range)
    normal = x.abs() >= s * 2 ** -6
    assert ((back - x).abs()[normal] <= x.abs()[normal] / 16 + 1e-7).all()
    zq, zs = fm.quantize_input(torch.zeros(4, 16))
    assert zs.item() == 1.0 and zq.float().abs().sum() == 0


@pytest.mark.parametrize("mm", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_product_equals_the_dequantized_fp32_product(mm, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 64, generator=g).to(dtype)
    w8, sw = quantize(torch.randn(48, 64, generator=g) * 0.05)
    bias = torch.randn(48, generator=g).to(dtype)
    y = fm.scaled_mm_linear(x, w8, sw, bias, dtype, mm)
    assert y.shape == (2, 37, 48) and y.dtype == dtype
    # the same quantized operands multiplied in fp32: only the accumulation order and the output
    # rounding differ (fp32: ~1e-6; bf16 output: its 8-bit mantissa, 2^-8 relative)
    x8, sx = fm.quantize_input(x.reshape(-1, 64))
    ref = F.linear(x8.float() * sx, w8.float() * sw, bias.float()).reshape(2, 37, 48)
    tol = 1e-5 if dtype == torch.float32 else 2 ** -7
    assert (y.float() - ref).abs().max().item() <= tol * ref.abs().max().item()
    # against the unquantized input: e4m3 rounds each input by up to 1/16 (2.6 % RMS per element);
    # over a 64-term sum the errors partly cancel (measured 0.9 %): 3 % bounds it
    full = F.linear(x.float(), w8.float() * sw, bias.float())
    rel = ((y.float() - full).pow(2).mean().sqrt() / full.pow(2).mean().sqrt()).item()
    assert 0 < rel < 0.03


@pytest.mark.parametrize("mm", KERNELS)
def test_sizes_that_are_not_multiples_of_16_are_zero_padded(mm):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 40, generator=g)
    w8, sw = quantize(torch.randn(24, 40, generator=g))
    y = fm.scaled_mm_linear(x, w8, sw, None, torch.float32, mm)
    x8, sx = fm.quantize_input(x)
    ref = F.linear(x8.float() * sx, w8.float() * sw)
    assert y.shape == (5, 24) and torch.allclose(y, ref, rtol=1e-5, atol=1e-5)


# ---- layers and models --------------------------------------------------------------------------------
def _fp8_layer(seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(32, 64, generator=g) * 0.05)
    return ScaledFp8Linear(lin)


def test_the_fp8_matmul_layer_shares_the_stored_tensors_and_matches_the_upcast_layer():
    base = _fp8_layer()
    layer = fm.ScaledMmLinear(base, mm=fm.emulated_scaled_mm)
    assert layer.weight is base.weight and layer.weight_scale is base.weight_scale and layer.bias is base.bias
    x = torch.randn(3, 10, 64)
    up = base(x)
    rel = ((layer(x) - up).pow(2).mean().sqrt() / up.pow(2).mean().sqrt()).item()
    assert 0 < rel < 0.03


def test_a_failing_kernel_call_upcasts_that_layer_with_one_notice():
    notes = []

    def broken(*a, **k):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
    base = _fp8_layer()
    layer = fm.ScaledMmLinear(base, notes.append, mm=broken, name="blocks.0.ffn.net.0.proj")
    x = torch.randn(2, 64)
    assert torch.equal(layer(x), base(x))
    assert torch.equal(layer(x), base(x))
    assert len(notes) == 1 and "blocks.0.ffn.net.0.proj" in notes[0] and "no kernel image" in notes[0]
    assert layer.failed


def test_enable_on_a_cpu_changes_nothing_and_says_why():
    model = reference_components("tiny-wan2.1-t2v").transformer
    store_fp8_scaled(model)
    notes = []
    assert fm.enable_scaled_mm(model, notes.append, device="cpu") == 0
    assert len(notes) == 1 and "upcast" in notes[0]
    assert not any(isinstance(m, fm.ScaledMmLinear) for m in model.modules())


def test_enable_and_disable_on_a_tiny_transformer_keep_its_output_close():
    model = reference_components("tiny-wan2.1-t2v").transformer
    n_fp8 = store_fp8_scaled(model)
    g = torch.Generator().manual_seed(2)
    args = dict(hidden_states=torch.randn(1, 16, 3, 8, 8, generator=g), timestep=torch.tensor([700]),
                encoder_hidden_states=torch.randn(1, 512, 32, generator=g), return_dict=False)
    with torch.no_grad():
        upcast = model(**args)[0]
        n = fm.enable_scaled_mm(model, print, device="cuda:0", probe=lambda d: (True, "test"),
                                mm=fm.emulated_scaled_mm)
        fp8 = model(**args)[0]
        assert n == n_fp8 == sum(isinstance(m, fm.ScaledMmLinear) for m in model.modules())
        assert fm.disable_scaled_mm(model) == n
        again = model(**args)[0]
    assert torch.equal(again, upcast)
    rel = ((fp8 - upcast).pow(2).mean().sqrt() / upcast.pow(2).mean().sqrt()).item()
    # 2 blocks x 10 linears, each input rounded to e4m3 (~1 % per product, see above)
    print(f"tiny transformer, fp8 matmul vs upcast: relative RMS {rel:.4f}")
    assert 0 < rel < 0.05, rel
