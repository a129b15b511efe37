"""Every on-disk layout of the tiny models is found, identified by its tensors and loads to the same weights."""
from __future__ import annotations

import pytest
import torch

from wan_app import tiny
from wan_app.checkpoints import load_components, load_transformer, scan

LAYOUTS = ["diffusers-t2v", "diffusers-a14b", "diffusers-ti2v", "official-t2v", "official-a14b", "official-ti2v",
           "comfyui-fp16", "comfyui-bf16", "comfyui-fp8", "comfyui-fp8-scaled", "comfyui-a14b-fp8-scaled",
           "comfyui-ti2v"]
I2V_LAYOUTS = [f"{kind}-{tag}" for tag in ("i2v", "i2v-a14b", "flf2v") for kind in ("diffusers", "official")] + [
    "comfyui-i2v-fp8-scaled", "comfyui-i2v-a14b-fp8-scaled", "comfyui-flf2v"]
GGUF_LAYOUTS = ["comfyui-gguf-q8_0", "comfyui-gguf-q4_k", "comfyui-a14b-gguf-q8_0"]


@pytest.fixture(scope="module")
def references():
    return {m: tiny.reference_components(m) for m in (tiny.T21, tiny.A14, tiny.TI2V)}


def max_rel_err(module, ref) -> float:
    a, b = module.state_dict(), ref.state_dict()
    assert set(a) == set(b)
    return max(float((a[k].float() - b[k].float()).abs().max() / (b[k].float().abs().max() + 1e-12)) for k in b
               if b[k].is_floating_point() and b[k].numel())


def test_build_all_writes_every_layout(tiny_root):
    assert sorted(tiny_root) == sorted(LAYOUTS + I2V_LAYOUTS + GGUF_LAYOUTS)


@pytest.mark.parametrize("layout", LAYOUTS + I2V_LAYOUTS + GGUF_LAYOUTS)
def test_layout_scans_to_its_model_and_is_runnable(tiny_root, layout):
    info = tiny_root[layout]
    inv = scan([info.path])
    assert info.model_id in inv.runnable_ids()
    files = inv.resolve(info.model_id)
    assert files.transformer.dtype == info.dtype
    if files.spec.experts == 2:
        assert files.transformer.expert == "high" and files.transformer_2.expert == "low"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_loads_to_the_reference_weights(tiny_root, references, layout):
    info = tiny_root[layout]
    ref = references[info.model_id]
    comp = load_components(scan([info.path]).resolve(info.model_id), torch.float32)
    # fp8 stores 3 mantissa bits: relative error up to 2^-4 of the tensor's max; everything else is exact
    tol = 0.07 if info.dtype.startswith("fp8") else 0.0
    assert max_rel_err(comp.transformer, ref.transformer) <= tol
    if ref.transformer_2 is not None:
        assert max_rel_err(comp.transformer_2, ref.transformer_2) <= tol
        # the experts are different models; a swap would be caught here
        assert max_rel_err(comp.transformer, ref.transformer_2) > 0.1
    te_tol = 0.07 if "fp8-scaled" in layout else 0.0
    assert max_rel_err(comp.text_encoder, ref.text_encoder) <= te_tol
    assert max_rel_err(comp.vae, ref.vae) == 0.0
    assert comp.vae.config.z_dim == ref.vae.config.z_dim
    assert list(comp.vae.config.latents_mean) == list(ref.vae.config.latents_mean)
    prompt = "a cat walks on the grass at night"
    assert comp.tokenizer(prompt).input_ids == ref.tokenizer(prompt).input_ids


def test_scaled_fp8_needs_its_scales(tiny_root, references):
    files = scan([tiny_root["comfyui-fp8-scaled"].path]).resolve(tiny.T21)
    ref = references[tiny.T21].transformer
    assert max_rel_err(load_transformer(files, "only"), ref) < 0.07
    # what a loader unaware of the scales would use: the raw fp8 values of the file
    from safetensors.torch import load_file
    raw = load_file(str(files.transformer.path))
    q = next(k for k in raw if k.endswith("blocks.0.self_attn.q.weight"))
    assert raw[q].dtype == torch.float8_e4m3fn and raw[q[: -len("weight")] + "scale_weight"].float() != 1
    want = ref.blocks[0].attn1.to_q.weight.float()
    assert float((raw[q].float() - want).abs().max() / want.abs().max()) > 10


def test_loaded_tiny_model_runs_a_forward_pass_equal_to_the_reference(tiny_root, references):
    files = scan([tiny_root["comfyui-bf16"].path]).resolve(tiny.T21)
    t = load_transformer(files)
    ref = references[tiny.T21].transformer
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 8, 8, generator=g)
    ctx = torch.randn(1, 12, tiny.TEXT_DIM, generator=g)
    ts = torch.tensor([500])
    with torch.no_grad():
        out = t(x, ts, ctx, return_dict=False)[0]
        want = ref(x, ts, ctx, return_dict=False)[0]
    assert out.shape == x.shape
    assert torch.equal(out, want)


def test_a14b_experts_load_one_at_a_time(tiny_root, references):
    files = scan([tiny_root["official-a14b"].path]).resolve(tiny.A14)
    low = load_transformer(files, "low")
    assert max_rel_err(low, references[tiny.A14].transformer_2) == 0.0


def test_cli_prints_what_it_wrote(tmp_path, capsys):
    assert tiny.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in LAYOUTS:
        assert name in printed and (tmp_path / name).is_dir()
