"""Low-precision loading. An fp8 plan loads fp8: block linears go from the file into fp8 + scale storage
directly, so no full-precision copy of the model is ever made (a 14B expert in bf16 would be 28.6 GB of
RAM). An fp16 umT5 keeps `wo` in fp32."""
from __future__ import annotations

import torch
from torch import nn

from wan_app import tiny
from wan_app.checkpoints import scan
from wan_app.checkpoints.load import build_text_encoder, load_transformer
from wan_app.engine import Engine
from wan_app import events
from wan_app.fp8 import FP8, ScaledFp8Linear
from wan_app.hardware import Hardware
from wan_app.media import probe
from wan_app.plan_types import Overrides
from wan_app.request import Request

from .support import mapped_ranges


def files_of(tiny_root, layout, model_id=tiny.T21):
    return scan([tiny_root[layout].path]).resolve(model_id)


def dit_forward(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 3, 8, 8, generator=g)
    ctx = torch.randn(1, 12, tiny.TEXT_DIM, generator=g)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=ctx,
                     return_dict=False)[0]


def test_scaled_fp8_file_is_kept_as_its_own_fp8_bytes_with_its_scales(tiny_root):
    files = files_of(tiny_root, "comfyui-fp8-scaled")
    kept = load_transformer(files, "only", torch.float32, fp8=True)
    linears = [m for m in kept.blocks.modules() if isinstance(m, (nn.Linear, ScaledFp8Linear))]
    assert linears and all(isinstance(m, ScaledFp8Linear) and m.weight.dtype == FP8 for m in linears)
    # the fp8 weights are the file's bytes, still memory-mapped: nothing was dequantized and re-quantized
    spans = mapped_ranges(files.transformer.path)
    assert spans and all(any(lo <= m.weight.data_ptr() < hi for lo, hi in spans) for m in linears)
    assert any(float(m.weight_scale) != 1.0 for m in linears)          # the file's scales, not 1
    # w.to(f32) · s is exactly what the dequantizing load computes, so the outputs agree
    full = load_transformer(files, "only", torch.float32)
    assert torch.allclose(dit_forward(kept), dit_forward(full), atol=1e-5, rtol=1e-5)


def test_16_bit_file_under_an_fp8_plan_is_quantized_layer_by_layer_and_stays_close(tiny_root):
    files = files_of(tiny_root, "comfyui-fp16")
    kept = load_transformer(files, "only", torch.float32, fp8=True)
    assert all(m.weight.dtype == FP8 for m in kept.blocks.modules() if isinstance(m, ScaledFp8Linear))
    ref = dit_forward(load_transformer(files, "only", torch.float32))
    out = dit_forward(kept)
    # measured: e4m3 with a per-tensor absmax scale keeps ~2 significant digits per weight; on the
    # tiny model's output that is a relative error of a few percent at most
    assert ((out - ref).norm() / ref.norm()).item() < 0.05


def test_fp8_text_encoder_keeps_wo_in_the_compute_dtype_and_matches_the_dequantized_one(tiny_root):
    te_file = files_of(tiny_root, "comfyui-fp8-scaled").text_encoder
    kept = build_text_encoder(te_file, torch.float32, fp8=True)
    full = build_text_encoder(te_file, torch.float32)
    block = kept.encoder.block[0]
    assert isinstance(block.layer[0].SelfAttention.q, ScaledFp8Linear)
    assert isinstance(block.layer[1].DenseReluDense.wi_0, ScaledFp8Linear)
    assert type(block.layer[1].DenseReluDense.wo) is nn.Linear
    assert block.layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    ids = torch.tensor([[5, 9, 13, 2, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        a = kept(ids, mask).last_hidden_state
        b = full(ids, mask).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_engine_runs_an_fp8_plan_end_to_end(tiny_root, tmp_path):
    engine = Engine([tiny_root["comfyui-fp8-scaled"].path], tmp_path, overrides=Overrides(weight_dtype="fp8"),
                    hardware=Hardware.simulated(vram_gb=None, ram_gb=24.0))
    evs = list(engine.run(Request(model=tiny.T21, prompt="x", frames=9, width=64, height=64, steps=2, seed=1)))
    done = [e for e in evs if isinstance(e, events.Finished)]
    assert done, [e for e in evs if isinstance(e, events.Failed)]
    assert done[0].metadata["plan"]["weight_dtype"] == "fp8"
    assert probe(done[0].path).frames == 9


def test_fp16_text_encoder_keeps_wo_in_fp32_like_transformers_does(tiny_root):
    """T5's feed-forward output overflows fp16 (GPUs without bf16 run umT5 in fp16)."""
    te_file = files_of(tiny_root, "comfyui-fp16").text_encoder
    te = build_text_encoder(te_file, torch.float16)
    ff = te.encoder.block[0].layer[1].DenseReluDense
    assert ff.wo.weight.dtype == torch.float32 and ff.wi_0.weight.dtype == torch.float16
    ids = torch.tensor([[5, 9, 13, 2]])
    with torch.no_grad():
        out = te(ids, torch.ones_like(ids)).last_hidden_state
    assert torch.isfinite(out).all()
