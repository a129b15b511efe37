"""The real-size benchmark's checkpoint writer (bench/realsize_bench.py), and what the loader costs on
its files at reduced sizes: the same names, dtypes and layouts as the real ComfyUI files, fewer layers.
Memory is measured in a fresh process (bench --probe), so nothing this test process holds distorts it."""
from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("realsize_bench", ROOT / "bench" / "realsize_bench.py")
rb = sys.modules.setdefault("realsize_bench", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(rb)

# Wan2.1 1.3B's widths with 2 of its 30 blocks: 120 M params, 240 MB in fp16.
SMALL_13B = dict(rb.DIT["1.3b"], layers=2)
# umT5-xxl's real 256,384-row embedding at a width of 64, 2 blocks.
SMALL_UMT5 = dict(vocab=256384, d_model=64, d_kv=16, d_ff=256, layers=2, heads=4, buckets=32)


def test_the_writer_reproduces_the_published_sizes_of_the_comfyui_files():
    """Names, shapes and dtypes are right when the byte counts equal the real files' (WAN_FACTS)."""
    assert rb._expected_size(rb.dit_tensors(**rb.DIT["5b"], layout="fp16")) == \
        rb.REAL_FILE_BYTES["wan2.2_ti2v_5B_fp16.safetensors"]
    assert rb._expected_size(rb.vae_tensors("wan2.2")) == rb.REAL_FILE_BYTES["wan2.2_vae.safetensors"]
    # the umT5 file differs by its tokenizer only: ours has 440,531 bytes more than the real 4,548,313
    real_spm = 4_548_313
    ours = rb._expected_size(rb.umt5_tensors(**rb.UMT5_XXL, spm_bytes=real_spm))
    assert abs(ours - rb.REAL_FILE_BYTES["umt5_xxl_fp8_e4m3fn_scaled.safetensors"]) < 1000     # header digits


def test_the_written_tokenizer_is_a_valid_sentencepiece_model_of_umt5s_size():
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_proto=rb.spm_model())
    assert sp.get_piece_size() == rb.UMT5_SPM_PIECES <= rb.UMT5_XXL["vocab"]
    ids = sp.encode("a cat walks on the grass")
    assert ids and max(ids) < sp.get_piece_size() and sp.decode(ids) == "a cat walks on the grass"


def test_sparse_files_take_almost_no_disk_and_read_back_as_valid_safetensors(tmp_path):
    from safetensors import safe_open
    from wan_app.checkpoints import identify_file
    path = tmp_path / "wan2.1_t2v_small_fp16.safetensors"
    tensors = rb.dit_tensors(**SMALL_13B, layout="comfy-fp16-prefixed")
    size = rb.write_sparse_safetensors(path, tensors)
    assert size == path.stat().st_size == rb._expected_size(tensors) > 200e6
    assert path.stat().st_blocks * 512 < 2e6
    with safe_open(str(path), framework="pt") as f:          # safetensors validates the offsets
        t = f.get_tensor("model.diffusion_model.blocks.1.ffn.0.weight")
    assert t.dtype == torch.float16 and t.shape == (8960, 1536) and not t.any()
    found = identify_file([path])
    assert found.kind == "dit" and found.ident.prefixed and found.ident.dtype == "fp16"
    assert (found.ident.arch.dim, found.ident.arch.ffn_dim, found.ident.arch.num_layers) == (1536, 8960, 2)


def test_data_given_to_the_writer_lands_at_its_tensor(tmp_path):
    from safetensors import safe_open
    path = tmp_path / "x.safetensors"
    rb.write_sparse_safetensors(path, {"a": ("F16", (3, 5)), "b": ("U8", (4,))}, {"b": b"\x01\x02\x03\x04"})
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("b").tolist() == [1, 2, 3, 4] and not f.get_tensor("a").any()
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert (8 + n) % 8 == 0 and json.loads(path.read_bytes()[8:8 + n])["b"]["dtype"] == "U8"
    with pytest.raises(ValueError):
        rb.write_sparse_safetensors(path, {"b": ("U8", (4,))}, {"b": b"\x01"})


def _gb(r, key, when="after"):
    return (r[when][key] - r["before"][key]) / 1e9


def test_a_dit_stored_in_bf16_never_holds_more_than_its_bf16_copy_while_loading(tmp_path):
    """Built tensor by tensor in the storage dtype: the peak of anonymous memory is the model itself
    (an fp32 build first, cast later, would peak at twice that), and the fp16 file's pages leave the
    process once converted."""
    path = tmp_path / "wan2.1_t2v_small_fp16.safetensors"
    rb.write_sparse_safetensors(path, rb.dit_tensors(**SMALL_13B, layout="comfy-fp16-prefixed"))
    r = rb.run_probe("dit", path, "bf16", "fp32", "wan2.1-t2v-1.3b")
    model = sum(r["param_bytes"].values()) / 1e9
    assert r["param_bytes"]["bfloat16"] > 0.95 * model > 0.2
    assert 0.9 * model <= _gb(r, "RssAnon", "peak") <= 1.1 * model + 0.03
    assert _gb(r, "RssFile") < 0.03          # library code pages only: the file is no longer mapped


def test_a_model_keeping_one_tensor_of_its_file_does_not_keep_the_rest_mapped(tmp_path):
    """fp32 storage of a ComfyUI fp16 file keeps its F32 patch embedding memory-mapped, and with it the
    whole mapping; the converted tensors' pages are released from it (RssFile would be the file)."""
    path = tmp_path / "wan2.1_t2v_small_fp16.safetensors"
    file_gb = rb.write_sparse_safetensors(path, rb.dit_tensors(**SMALL_13B, layout="comfy-fp16-prefixed")) / 1e9
    r = rb.run_probe("dit", path, "fp32", "fp32", "wan2.1-t2v-1.3b")
    assert _gb(r, "RssFile", "peak") > 0.9 * file_gb     # the whole file was read while converting
    assert _gb(r, "RssFile") < 0.03


def test_an_fp8_dit_from_a_scaled_fp8_file_stays_file_backed(tmp_path):
    path = tmp_path / "wan2.1_t2v_small_fp8_scaled.safetensors"
    rb.write_sparse_safetensors(path, rb.dit_tensors(**SMALL_13B, layout="fp8-scaled"))
    r = rb.run_probe("dit", path, "fp8", "fp32", "wan2.1-t2v-1.3b")
    fp8 = r["param_bytes"]["float8_e4m3fn"] / 1e9
    rest = r["param_bytes"]["float32"] / 1e9          # non-block parts in the compute dtype
    assert fp8 > 0.08
    assert _gb(r, "RssFile") >= 0.95 * fp8            # the fp8 linears are the file's pages
    assert _gb(r, "RssAnon") <= 1.1 * rest + 0.03     # only the converted rest is anonymous


def test_an_fp8_umt5_keeps_its_embedding_as_file_pages(tmp_path):
    path = tmp_path / "umt5_small_fp8_e4m3fn_scaled.safetensors"
    spm = rb.spm_model(pieces=3000)
    rb.write_sparse_safetensors(path, rb.umt5_tensors(**SMALL_UMT5, spm_bytes=len(spm)), {"spiece_model": spm})
    r = rb.run_probe("umt5", path, "fp8", "fp32")
    emb = SMALL_UMT5["vocab"] * SMALL_UMT5["d_model"] * 2 / 1e9
    assert r["param_bytes"]["float16"] / 1e9 == pytest.approx(emb)
    assert _gb(r, "RssFile") >= 0.95 * emb
    converted = (r["param_bytes"]["bfloat16"] + r["param_bytes"]["float32"]) / 1e9   # wo; norms, biases
    assert _gb(r, "RssAnon") <= converted + 0.02
