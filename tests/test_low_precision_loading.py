"""Low-precision loading. The DiT is built in the plan's storage dtype, one tensor at a time, so
apply_plan's cast changes nothing. An fp8 plan loads fp8: block linears go from the file into fp8 + scale
storage directly, so no full-precision copy of the model is ever made (a 14B expert in bf16 would be
28.6 GB of RAM). An fp8 umT5 keeps its 16-bit embedding memory-mapped; an fp16 umT5 keeps `wo` in fp32.
Memory-mapped weights stay clean file pages: nothing writes into them."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from wan_app import tiny
from wan_app.checkpoints import load, scan
from wan_app.checkpoints.load import build_text_encoder, load_components, load_tokenizer, load_transformer
from wan_app.memory import apply_plan
from wan_app.plan_types import Plan
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


def test_fp8_text_encoder_keeps_wo_in_16_bit_and_matches_the_dequantized_one(tiny_root):
    """UMT5 casts its input to wo's dtype, so wo is not fp8: under fp32 compute (a CPU) it is bf16, the
    16 bit the planner counts. The result equals the dequantized fp32 encoder whose wo is bf16."""
    te_file = files_of(tiny_root, "comfyui-fp8-scaled").text_encoder
    kept = build_text_encoder(te_file, torch.float32, fp8=True)
    full = build_text_encoder(te_file, torch.float32)
    block = kept.encoder.block[0]
    assert isinstance(block.layer[0].SelfAttention.q, ScaledFp8Linear)
    assert isinstance(block.layer[1].DenseReluDense.wi_0, ScaledFp8Linear)
    assert type(block.layer[1].DenseReluDense.wo) is nn.Linear
    assert block.layer[1].DenseReluDense.wo.weight.dtype == torch.bfloat16
    assert block.layer[0].layer_norm.weight.dtype == torch.float32
    for b in full.encoder.block:
        b.layer[1].DenseReluDense.wo.to(torch.bfloat16)
    ids = torch.tensor([[5, 9, 13, 2, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        a = kept(ids, mask).last_hidden_state
        b = full(ids, mask).last_hidden_state
    assert a.dtype == torch.float32
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_fp8_text_encoder_wo_follows_the_compute_dtype_on_gpus(tiny_root):
    te_file = files_of(tiny_root, "comfyui-fp8-scaled").text_encoder
    wo = lambda te: te.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype  # noqa: E731
    assert wo(build_text_encoder(te_file, torch.bfloat16, fp8=True)) == torch.bfloat16
    assert wo(build_text_encoder(te_file, torch.float16, fp8=True)) == torch.float32     # fp16 overflows


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


def cpu_plan(weight_dtype, compute="fp32", te="fp32"):
    return Plan(device="cpu", compute_dtype=compute, weight_dtype=weight_dtype, text_encoder_device="cpu",
                text_encoder_dtype=te, blocks_total=2, blocks_swapped=0, attention_backend="sdpa",
                vae_tiling=False, max_frames=9)


def only(transformer):
    return SimpleNamespace(transformer=transformer, transformer_2=None, vae=None, text_encoder=None,
                           tokenizer=None, spec=SimpleNamespace(experts=1))


def param_state(model):
    return {n: (p.dtype, p.data_ptr()) for n, p in model.named_parameters()}


def in_file(tensor, spans):
    return any(lo <= tensor.data_ptr() < hi for lo, hi in spans)


@pytest.mark.parametrize("layout,storage", [("comfyui-fp16", "bf16"), ("comfyui-fp16", "fp16"),
                                            ("comfyui-fp16", "fp32"), ("official-t2v", "bf16"),
                                            ("comfyui-bf16", "bf16"), ("comfyui-fp8-scaled", "fp8")])
def test_dit_is_built_in_the_plans_storage_dtype_so_apply_plan_casts_nothing(tiny_root, layout, storage):
    files = files_of(tiny_root, layout)
    model = load_transformer(files, "only", torch.float32, storage_dtype=storage)
    keep = model._keep_in_fp32_modules
    want = {"fp8": torch.float32, "fp32": torch.float32}.get(storage) or load.STORAGE_DTYPES[storage]
    for name, p in model.named_parameters():
        if p.dtype != torch.float8_e4m3fn:
            assert p.dtype == (torch.float32 if any(k in name for k in keep) else want), name
    before = param_state(model)
    apply_plan(cpu_plan(storage), only(model), notify=lambda m: None)
    assert param_state(model) == before          # no parameter re-made: no second copy of the model


def test_without_a_storage_dtype_apply_plan_still_has_to_cast(tiny_root):
    """The check above can fail: a model built in the compute dtype is re-made by apply_plan."""
    model = load_transformer(files_of(tiny_root, "comfyui-fp16"), "only", torch.float32)
    before = param_state(model)
    apply_plan(cpu_plan("bf16"), only(model), notify=lambda m: None)
    assert param_state(model) != before


def test_tensors_already_in_the_storage_dtype_stay_memory_mapped(tiny_root):
    files = files_of(tiny_root, "comfyui-bf16")
    model = load_transformer(files, "only", torch.float32, storage_dtype="bf16")
    spans = mapped_ranges(files.transformer.path)
    bf16 = {n for n, p in model.named_parameters() if p.dtype == torch.bfloat16}
    copied = {n for n, p in model.named_parameters() if not in_file(p, spans)}
    # the file's one F32 tensor (as in ComfyUI's) is converted, as are the fp32-kept norms; nothing else
    assert len(bf16) > 10 and bf16 & copied == {"patch_embedding.weight"}
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in copied - bf16)


def test_load_components_passes_the_storage_dtype_to_every_expert(tiny_root):
    files = files_of(tiny_root, "comfyui-a14b-fp8-scaled", tiny.A14)
    comp = load_components(files, torch.float32, storage_dtype="fp8", text_encoder_fp8=True)
    for t in (comp.transformer, comp.transformer_2):
        assert {m.weight.dtype for m in t.blocks.modules() if isinstance(m, ScaledFp8Linear)} == {FP8}
    bf = load_components(files_of(tiny_root, "comfyui-fp16"), torch.float32, storage_dtype="bf16")
    assert bf.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16


def test_an_unknown_storage_dtype_is_refused_by_name(tiny_root):
    from wan_app.errors import UserError
    with pytest.raises(UserError) as e:
        load_transformer(files_of(tiny_root, "comfyui-fp16"), "only", storage_dtype="int4")
    assert e.value.field == "weight_dtype"


def test_fp8_text_encoder_keeps_its_16_bit_embedding_memory_mapped_and_runs_in_the_compute_dtype(tiny_root):
    te_file = files_of(tiny_root, "comfyui-fp8-scaled").text_encoder
    kept = build_text_encoder(te_file, torch.float32, fp8=True)
    spans = mapped_ranges(te_file.path)
    assert kept.shared.weight.dtype == torch.float16 and in_file(kept.shared.weight, spans)
    assert kept.encoder.embed_tokens.weight is kept.shared.weight
    fp8 = [m.weight for m in kept.encoder.block.modules() if isinstance(m, ScaledFp8Linear)]
    assert fp8 and all(in_file(w, spans) for w in fp8)
    # what is not in the file's bytes: wo (dequantized) and the small norms / position biases
    copied = [n for n, p in kept.named_parameters() if p.dtype != FP8 and not in_file(p, spans)]
    assert copied and all(n.endswith(("wo.weight", "layer_norm.weight", "relative_attention_bias.weight"))
                          for n in copied)
    ids = torch.tensor([[5, 9, 13, 2, 0, 0]])
    with torch.no_grad():
        out = kept(ids, (ids > 0).long()).last_hidden_state
    assert out.dtype == torch.float32


def smaps_of(path) -> list[dict[str, int]]:
    """/proc/self/smaps fields (kB) of every mapping of `path`."""
    out, cur = [], None
    for line in open("/proc/self/smaps"):
        parts = line.split()
        if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
            cur = {} if len(parts) >= 6 and parts[5] == str(path) else None
            if cur is not None:
                out.append(cur)
        elif cur is not None and parts[0].endswith(":") and len(parts) >= 2 and parts[1].isdigit():
            cur[parts[0][:-1]] = int(parts[1])
    return out


def test_memory_mapped_weights_stay_clean_file_pages_through_loading_planning_and_running(tiny_root):
    """MAP_PRIVATE pages become anonymous copies when written; the mapped DiT and umT5 files must
    show none after the pre-read, apply_plan and a forward of each."""
    files = files_of(tiny_root, "comfyui-fp8-scaled")
    model = load_transformer(files, "only", torch.float32, storage_dtype="fp8")
    te = build_text_encoder(files.text_encoder, torch.float32, fp8=True)
    apply_plan(cpu_plan("fp8", te="fp8"), only(model), notify=lambda m: None)
    dit_forward(model)
    with torch.no_grad():
        te(torch.tensor([[5, 9, 2]]), torch.ones(1, 3, dtype=torch.long))
    for path in (files.transformer.path, files.text_encoder.path):
        maps = smaps_of(path)
        assert maps and sum(m["Rss"] for m in maps) > 0            # pre-read: the pages are mapped
        assert sum(m["Anonymous"] for m in maps) == 0               # and none was copied on write


def test_the_tokenizer_inside_the_umt5_file_is_read_alone(tiny_root, monkeypatch):
    """ComfyUI's umT5 file is 6.7 GB; its tokenizer is a 4.5 MB tensor: that tensor alone is read."""
    import safetensors
    found = files_of(tiny_root, "comfyui-fp8-scaled").tokenizer
    assert found.kind == "text_encoder"
    read, populated = [], []
    real_open = safetensors.safe_open

    class Spy:
        def __init__(self, *a, **kw):
            self.f = real_open(*a, **kw)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def keys(self):
            return self.f.keys()

        def get_tensor(self, key):
            read.append(key)
            return self.f.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    monkeypatch.setattr(load, "_populate", lambda tensors: populated.append(len(tensors)))
    tok = load_tokenizer(found)
    assert read == ["spiece_model"] and populated == []
    ref = load.tokenizer_from_spm(tiny.spm_bytes())
    assert tok("a cat walks").input_ids == ref("a cat walks").input_ids
