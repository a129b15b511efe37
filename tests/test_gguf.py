"""GGUF DiT files: tiny Q8_0 / Q4_K / F16 files in the city96 layout, read from their mapping and
dequantized per layer; their output against fp32 and against the gguf package's own decoder."""
import os

import numpy as np
import pytest
import torch

from tests.support import mapped_ranges
from wan_app import tiny, tiny_gguf
from wan_app.checkpoints import convert
from wan_app.checkpoints import gguf as G
from wan_app.errors import UserError

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def ref():
    return tiny.reference_components(tiny.T21).transformer


@pytest.fixture(scope="module")
def files(ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    sd = tiny_gguf.tiny_dit_state_dict(ref)
    out = {q: tiny_gguf.write_dit_gguf(sd, d / f"wan2.1_t2v_tiny_{q}.gguf", q) for q in tiny_gguf.QTYPES}
    out["prefixed"] = tiny_gguf.write_dit_gguf(sd, d / "prefixed_Q8_0.gguf", "Q8_0", prefix=True)
    return out


def _inputs():
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, 16, 3, 8, 8, generator=g), timestep=torch.tensor([700]),
                encoder_hidden_states=torch.randn(1, 512, 32, generator=g), return_dict=False)


@torch.no_grad()
def _out(model):
    return model(**_inputs())[0]


def _rel(a, b):
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


# ---- output ---------------------------------------------------------------------------------------
def test_q8_0_output_is_close_to_fp32(ref, files):
    model = G.build_gguf_transformer(files["Q8_0"], head_dim=16)
    rel = _rel(_out(model), _out(ref))
    # Q8_0 rounds each weight to a step of 1/127 of its 32-value block's absmax (at most 0.4 % of it),
    # with an fp16 block scale; through 2 blocks and the head that is ~0.75 % RMS here: 2 % bounds it
    assert 0 < rel < 0.02, rel


def test_q4_k_output_is_within_a_looser_bound(ref, files):
    model = G.build_gguf_transformer(files["Q4_K"], head_dim=16)
    rel = _rel(_out(model), _out(ref))
    rel8 = _rel(_out(G.build_gguf_transformer(files["Q8_0"], head_dim=16)), _out(ref))
    # Q4_K: 16 levels across each 32-value sub-block's range, 6-bit scales: ~8 % RMS per weight (see
    # the encoder test), 13 % here at the output; 25 % bounds it, and it must be worse than Q8_0
    assert rel8 < rel < 0.25, rel


def test_f16_weights_give_the_fp32_output_exactly(ref, files):
    # the tiny weights are bf16-rounded values that fp16 holds exactly
    assert torch.equal(_out(G.build_gguf_transformer(files["F16"], head_dim=16)), _out(ref))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
def test_per_layer_dequantization_equals_the_gguf_packages_decoder(qtype, files):
    """A plain fp32 model given every tensor decoded up front by gguf.quants.dequantize (the format's
    reference decoder) computes what the GGUF model computes layer by layer."""
    reader = gguf.GGUFReader(str(files[qtype]))
    sd = {}
    for t in reader.tensors:
        shape = G._orig_shape(reader, t.name) or tuple(int(x) for x in reversed(t.shape.tolist()))
        sd[t.name] = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type))).reshape(shape)
    plain = tiny.reference_components(tiny.T21).transformer
    plain.load_state_dict(convert.dit_official_to_diffusers(sd))
    ours = G.build_gguf_transformer(files[qtype], head_dim=16)
    assert torch.allclose(_out(ours), _out(plain), rtol=1e-5, atol=1e-6)


def test_a_bf16_run_dequantizes_in_bf16(files):
    model = G.build_gguf_transformer(files["Q8_0"], head_dim=16, dtype=torch.bfloat16)
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    lin = model.blocks[0].attn1.to_q
    assert isinstance(lin, G.GgufLinear) and lin(x).dtype == torch.bfloat16
    assert model.blocks[0].norm2.weight.dtype == torch.float32          # _keep_in_fp32_modules
    assert model.patch_embedding.weight.dtype == torch.bfloat16


# ---- bytes, names, mapping ------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", tiny_gguf.QTYPES)
def test_header_bytes_equal_the_files_tensor_bytes(qtype, files):
    path = files[qtype]
    header = G.read_gguf_header(path)
    reader = gguf.GGUFReader(str(path))
    # each tensor's bytes from its shape and the type's block size, independently of the reader
    for t in reader.tensors:
        block, size = gguf.GGML_QUANT_SIZES[t.tensor_type]
        assert header[t.name].nbytes == int(np.prod(t.shape.tolist())) // block * size == t.data.nbytes
    # and the file is the header plus exactly those bytes, each padded to the 32-byte alignment
    start = min(t.data_offset for t in reader.tensors)
    padded = sum(-(-h.nbytes // 32) * 32 for h in header.values())
    assert os.path.getsize(path) - start == padded
    sizes = G.gguf_sizes(header)
    assert sizes.total == sum(h.nbytes for h in header.values())
    assert len(sizes.blocks) == 2 and sizes.total == sum(sizes.blocks) + sizes.nonblock
    assert sizes.main_type == qtype


def test_a_gguf_tensor_list_identifies_like_the_safetensors_one(ref, files):
    official = tiny_gguf.tiny_dit_state_dict(ref)
    shapes = G.header_shapes(files["Q4_K"])                        # Q4_K: flattened rows, orig_shape kept
    assert shapes == {k: tuple(v.shape) for k, v in official.items()}
    assert G.header_shapes(files["prefixed"]) == shapes             # model.diffusion_model. stripped
    cfg = G.transformer_config(shapes, head_dim=16)
    assert {k: cfg[k] for k in ("num_layers", "ffn_dim", "in_channels", "out_channels", "text_dim", "freq_dim")} == {
        k: ref.config[k] for k in ("num_layers", "ffn_dim", "in_channels", "out_channels", "text_dim", "freq_dim")}
    assert cfg["num_attention_heads"] * cfg["attention_head_dim"] == 32


def test_the_state_dict_and_the_model_read_the_files_mapping_without_copies(files):
    path = files["Q8_0"]
    sd = G.load_gguf_state_dict(path)
    model = G.build_gguf_transformer(path, head_dim=16)
    spans = mapped_ranges(path)          # both mappings: the state dict's and the model's
    assert len(spans) >= 2

    def inside(t):
        p = t.data_ptr()
        return any(lo <= p < hi for lo, hi in spans)
    assert all(inside(t) for t in sd.values())
    linears = [m for m in model.modules() if isinstance(m, G.GgufLinear)]
    assert len(linears) == 24 and all(inside(m.weight) for m in linears)
    assert G.gguf_linears(model) == 24


def test_an_unsupported_quant_type_names_the_type_and_the_supported_ones(tmp_path):
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "wan")
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1]
    w.add_tensor("blocks.0.ffn.0.weight", np.zeros((64, 32 // block * size), np.uint8), raw_shape=(64, size),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UserError) as e:
        G.read_gguf_header(path)
    assert e.value.field == "checkpoint" and "Q8_1" in e.value.problem
    assert "Q4_K" in e.value.fix and "Q8_0" in e.value.fix and "Q8_1" not in e.value.fix


def test_gguf_files_are_told_by_their_magic_not_their_name(files, tmp_path):
    assert G.is_gguf(files["Q8_0"])
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"\x00" * 64)
    assert not G.is_gguf(fake) and not G.is_gguf(tmp_path / "missing.gguf")
    with pytest.raises(UserError) as e:
        G.read_gguf_header(fake)
    assert e.value.field == "checkpoint"


# ---- the tiny writer ------------------------------------------------------------------------------
def test_the_hand_written_q4_k_encoder_is_read_back_by_the_gguf_decoder_within_half_a_step():
    x = np.random.default_rng(0).standard_normal((16, 512)).astype(np.float32)
    q = tiny_gguf.quantize_q4_k(x)
    assert q.shape == (16, 2 * 144) and q.dtype == np.uint8
    back = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q4_K)
    sub = x.reshape(-1, 32)
    span = sub.max(1) - np.minimum(sub.min(1), 0)
    err = np.abs(back - x).reshape(-1, 32).max(1)
    # 16 levels over each sub-block's span: half a step is span/30; the 6-bit scales add a little
    assert (err <= span / 30 * 1.1 + 1e-6).all()


def test_python_m_wan_app_tiny_gguf_writes_folders_with_gguf_dits(tmp_path):
    assert tiny_gguf.main([str(tmp_path)]) == 0
    dits = sorted(p.name for p in tmp_path.glob("*/diffusion_models/*.gguf"))
    assert dits == ["wan2.1_t2v_tiny_Q4_K.gguf", "wan2.1_t2v_tiny_Q8_0.gguf",
                    "wan2.2_t2v_high_noise_tiny_Q8_0.gguf", "wan2.2_t2v_low_noise_tiny_Q8_0.gguf"]
    assert all(G.is_gguf(p) for p in tmp_path.glob("*/diffusion_models/*.gguf"))
    assert (tmp_path / "comfyui-gguf-q8_0" / "text_encoders" / "umt5_xxl_fp16.safetensors").exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_gguf_weights_survive_the_tensor_moves_block_swap_and_memory_make(ref, files):
    """wan_app.memory and blockswap move weights by pointing `param.data` at other tensors (home copies,
    device slots) and cast float parameters; GGUF bytes must come through both unchanged."""
    from wan_app.blockswap import BlockSwapper
    from wan_app.memory import _cast_params
    model = G.build_gguf_transformer(files["Q8_0"], head_dim=16)
    before = _out(model)
    _cast_params(model, torch.float32, list(model._keep_in_fp32_modules))
    for m in model.modules():
        if isinstance(m, G.GgufLinear):
            m.weight.data = m.weight.data.clone()           # a copy somewhere else, as a device slot is
    swapper = BlockSwapper(model, model.blocks, 1, "cpu", notify=lambda s: None).install()
    try:
        assert torch.equal(_out(model), before)
    finally:
        swapper.remove()
    assert all(hasattr(m.weight, "quant_type") for m in model.modules() if isinstance(m, G.GgufLinear))
