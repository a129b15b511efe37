"""Image to video on tiny random weights: the official size rule, every tiny I2V layout found and loaded,
the CLIP encoder from both layouts, bad images refused naming the field, and the sampler's ImageToVideo
conditioning equal to diffusers' WanImageToVideoPipeline (Wan2.1 I2V with CLIP, Wan2.2 I2V A14B, FLF2V)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from wan_app import catalog, events, i2v, sampler, tiny
from wan_app.checkpoints import load_components, scan
from wan_app.checkpoints.clip_vision import build_clip_vision
from wan_app.engine import Engine
from wan_app.errors import UserError
from wan_app.hardware import Hardware
from wan_app.request import Request
from tests.support import clip as clip_job, load

CPU = Hardware.simulated(vram_gb=None, ram_gb=24.0)
LAYOUTS = {
    "diffusers-i2v": (tiny.I2V, "diffusers", "fp32"), "official-i2v": (tiny.I2V, "official", "fp32"),
    "comfyui-i2v-fp8-scaled": (tiny.I2V, "comfyui", "fp8_scaled"),
    "diffusers-i2v-a14b": (tiny.I2V_A14, "diffusers", "fp32"), "official-i2v-a14b": (tiny.I2V_A14, "official", "fp32"),
    "comfyui-i2v-a14b-fp8-scaled": (tiny.I2V_A14, "comfyui", "fp8_scaled"),
    "diffusers-flf2v": (tiny.FLF, "diffusers", "fp32"), "official-flf2v": (tiny.FLF, "official", "fp32"),
    "comfyui-flf2v": (tiny.FLF, "comfyui", "fp16"),
}


@pytest.fixture(scope="module")
def i2v_root(tmp_path_factory):
    """The tiny image-to-video layouts (tiny.build_i2v), written once for this module."""
    return tiny.build_i2v(tmp_path_factory.mktemp("tiny_i2v"))


@pytest.fixture(scope="module")
def references():
    return {m: tiny.reference_components(m) for m in (tiny.I2V, tiny.I2V_A14, tiny.FLF)}


def max_abs_err(module, ref) -> float:
    a, b = module.state_dict(), ref.state_dict()
    assert set(a) == set(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in b if b[k].is_floating_point() and b[k].numel())


def rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---- the size rule --------------------------------------------------------------------------------------
def official_size(image_w, image_h, max_area):
    """wan/image2video.py WanI2V.generate (Wan2.1 and Wan2.2), transcribed: vae_stride 8, patch 2."""
    h, w = image_h, image_w
    aspect_ratio = h / w
    lat_h = round(np.sqrt(max_area * aspect_ratio) // 8 // 2 * 2)
    lat_w = round(np.sqrt(max_area / aspect_ratio) // 8 // 2 * 2)
    return lat_w * 8, lat_h * 8


@pytest.mark.parametrize("image, area, want", [
    ((832, 480), 480 * 832, (832, 464)),     # the float edge: 399360·(480/832) = 230399.99999999997
    ((480, 832), 480 * 832, (480, 832)),     # … which the portrait image does not hit: 230400.0
    ((1280, 720), 1280 * 720, (1280, 720)),
    ((1920, 1080), 1280 * 720, (1280, 720)),
    ((1000, 1000), 480 * 832, (624, 624)),
    ((4032, 3024), 480 * 832, (720, 544)),
    ((3024, 4032), 1280 * 720, (816, 1104)),
    ((96, 64), 64 * 64, (64, 48)),
])
def test_the_size_rule_is_the_official_max_area_rule(image, area, want):
    assert i2v.size_for_image(*image, area) == want == official_size(*image, area)


def test_the_size_rule_equals_the_official_one_for_many_aspect_ratios_and_keeps_the_float_edge():
    rng = np.random.default_rng(1)
    for _ in range(2000):
        w, h = (int(x) for x in rng.integers(64, 5000, 2))
        for area in (480 * 832, 720 * 1280):
            got = i2v.size_for_image(w, h, area)
            assert got == official_size(w, h, area), (w, h, area)
            assert got[0] % 16 == 0 and got[1] % 16 == 0 and got[0] * got[1] <= area
    # exact arithmetic gives 480 rows here (399360·480/832 = 480²); the official float64 of area·(h/w) falls
    # just short of 480², so 464, and so do we
    assert 399360 * 480 == 480 ** 2 * 832 and np.sqrt(399360 * (480 / 832)) < 480
    assert i2v.size_for_image(832, 480, 399360)[1] == 464


def test_output_size_takes_the_area_of_the_models_size_and_ti2v_its_own_rule():
    assert i2v.output_size(catalog.get("wan2.1-i2v-14b-480p"), 832, 480) == (832, 464)
    assert i2v.output_size(catalog.get("wan2.2-i2v-a14b"), 1920, 1080) == (1280, 720)
    assert i2v.output_size(catalog.get("wan2.2-i2v-a14b"), 1920, 1080, (832, 480)) == (832, 464)
    # Wan2.2 TI2V 5B: wan/utils/utils.py best_output_size (width first vs height first, closest ratio)
    ti2v = catalog.get("wan2.2-ti2v-5b")
    assert i2v.output_size(ti2v, 1280, 720) == (1248, 704)
    assert i2v.output_size(ti2v, 704, 1280) == (704, 1280)


# ---- the catalog ----------------------------------------------------------------------------------------
def test_the_i2v_models_carry_the_official_defaults():
    a14 = catalog.get("wan2.2-i2v-a14b")
    assert (a14.arch.in_channels, a14.experts, a14.clip, a14.boundary, a14.shift, a14.steps) == (36, 2, False, 0.9, 5.0, 40)
    assert (a14.guidance, a14.guidance_2, a14.image_input, a14.image_required) == (3.5, 3.5, "image", True)
    p480, p720 = catalog.get("wan2.1-i2v-14b-480p"), catalog.get("wan2.1-i2v-14b-720p")
    assert (p480.shift, p720.shift, p480.steps, p480.guidance, p480.clip, p720.clip) == (3.0, 5.0, 40, 5.0, True, True)
    assert (p480.variant, p720.variant) == ("480p", "720p")
    flf = catalog.get("wan2.1-flf2v-14b-720p")
    assert (flf.shift, flf.steps, flf.image_input, flf.clip) == (16.0, 50, "image+last", True)
    assert flf.negative_prompt.startswith("镜头切换，")
    assert catalog.get("wan2.2-ti2v-5b").image_conditioning == "first_latents" and p480.image_conditioning == "channels"
    assert catalog.get("wan2.1-t2v-14b").image_input == "none"
    for spec in (p480, p720, flf):
        assert any(d.subdir == "clip_vision" and d.filename.endswith("clip_vision_h.safetensors") for d in spec.downloads)


# ---- finding and loading --------------------------------------------------------------------------------
def test_build_i2v_writes_every_i2v_layout(i2v_root):
    assert {n: (i.model_id, i.dtype) for n, i in i2v_root.items()} == {n: (m, d) for n, (m, _, d) in LAYOUTS.items()}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_tiny_i2v_layout_is_identified_by_its_tensors(i2v_root, layout):
    model_id, kind, dtype = LAYOUTS[layout]
    spec = catalog.get(model_id)
    inv = scan([i2v_root[layout].path])
    assert inv.runnable_ids() == [model_id] and inv.problems() == []
    files = inv.resolve(model_id)
    assert (files.transformer.layout, files.transformer.dtype) == (kind, dtype)
    assert files.transformer.arch.in_channels == 36 and files.transformer.ident.has_img_emb == spec.clip
    if spec.experts == 2:
        assert (files.transformer.expert, files.transformer_2.expert) == ("high", "low")
    assert (files.clip is not None) == spec.clip
    if spec.clip:
        assert files.clip.kind == "clip_vision" and files.clip.layout == kind
        assert files.sources()["clip"] == str(files.clip.path)
    # the official folder's CLIP text tokenizer (xlm-roberta-large/) is not taken for umT5's
    assert "xlm-roberta" not in str(files.tokenizer.path)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_tiny_i2v_layout_loads_to_the_reference_weights(i2v_root, references, layout):
    model_id, _, dtype = LAYOUTS[layout]
    ref = references[model_id]
    comp = load_components(scan([i2v_root[layout].path]).resolve(model_id), torch.float32)
    tol = 0.05 if dtype.startswith("fp8") else 0.0        # fp8: 3 mantissa bits; all else is exact
    assert max_abs_err(comp.transformer, ref.transformer) <= tol
    if ref.transformer_2 is not None:
        assert max_abs_err(comp.transformer_2, ref.transformer_2) <= tol
        assert max_abs_err(comp.transformer, ref.transformer_2) > 0.1          # the experts are not swapped
    assert (comp.clip is None) == (ref.clip is None)
    if ref.clip is not None:
        assert max_abs_err(comp.clip, ref.clip) == 0.0
    cfg = comp.transformer.config
    assert (cfg.in_channels, cfg.out_channels) == (36, 16)
    assert cfg.image_dim == (tiny.CLIP_WIDTH if ref.clip is not None else None)
    assert cfg.pos_embed_seq_len == (2 * tiny.CLIP_TOKENS if model_id == tiny.FLF else None)


def _sparse_i2v(path: Path, dim: int = 5120, layers: int = 40) -> Path:
    from .sparse_checkpoints import wan_dit_tensors, write_header_only
    return write_header_only(path, wan_dit_tensors(dim, 13824 if dim == 5120 else 8192, layers, in_ch=36, img_emb=True))


def test_an_i2v_14b_file_is_found_as_the_i2v_model_its_name_says_not_as_unsupported(tmp_path):
    dit = _sparse_i2v(tmp_path / "diffusion_models" / "wan2.1_i2v_720p_14B_fp8_e4m3fn.safetensors")
    inv = scan([tmp_path])
    assert inv.unsupported() == [] and not any("not supported" in p for p in inv.problems())
    st = {s.spec.id: s for s in inv.status()}
    assert st["wan2.1-i2v-14b-720p"].found == {"transformer": str(dit)}
    missing = " ".join(st["wan2.1-i2v-14b-720p"].missing)
    assert "diffusion model" not in missing and "umT5" in missing and "VAE" in missing
    assert f"clip_vision_h.safetensors into {tmp_path}/clip_vision/" in missing
    # "720p" in the name: the 480P model (same tensors, other weights) does not take it; T2V 14B neither
    assert "Missing the Wan2.1 I2V 14B 480P diffusion model" in " ".join(st["wan2.1-i2v-14b-480p"].missing)
    assert st["wan2.1-t2v-14b"].found == {}


def test_an_i2v_file_of_a_size_no_model_has_is_still_reported_with_its_shape(tmp_path):
    _sparse_i2v(tmp_path / "odd_i2v.safetensors", dim=2048, layers=24)
    [f] = scan([tmp_path]).unsupported()
    assert "Wan DiT dim 2048, 24 layers, in_channels 36" in f.problem and "image-to-video" in f.problem


def test_a_missing_clip_file_names_that_file_and_where_it_goes(i2v_root, tmp_path):
    root = shutil.copytree(i2v_root["comfyui-i2v-fp8-scaled"].path, tmp_path / "models")
    shutil.rmtree(root / "clip_vision")
    inv = scan([root])
    [st] = [s for s in inv.status() if s.spec.id == tiny.I2V]
    assert not st.runnable
    assert st.missing == [f"Missing the CLIP vision encoder (ViT-H/14) of {catalog.get(tiny.I2V).name}: put "
                          f"clip_vision_h.safetensors into {root}/clip_vision/ (or the official "
                          "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth next to the model's files)."]
    with pytest.raises(UserError, match="clip_vision_h.safetensors"):
        inv.resolve(tiny.I2V)


def _sparse_clip_h(path: Path) -> Path:
    """ComfyUI's clip_vision_h.safetensors as a header: ViT-H/14, 1280 wide, 32 blocks, fp16."""
    from .sparse_checkpoints import write_header_only
    t = {"vision_model.embeddings.class_embedding": ("F16", (1280,)),
         "vision_model.embeddings.patch_embedding.weight": ("F16", (1280, 3, 14, 14)),
         "vision_model.embeddings.position_embedding.weight": ("F16", (257, 1280)),
         "visual_projection.weight": ("F16", (1024, 1280))}
    for i in range(32):
        t[f"vision_model.encoder.layers.{i}.self_attn.q_proj.weight"] = ("F16", (1280, 1280))
        t[f"vision_model.encoder.layers.{i}.mlp.fc1.weight"] = ("F16", (5120, 1280))
    return write_header_only(path, t)


def test_a_real_clip_never_pairs_with_a_tiny_model_nor_a_tiny_one_with_a_real_model(i2v_root, tmp_path):
    """The tiny CLIP is 160 wide with 3 blocks; the real one 1280 wide with 32: they never stand in for each other."""
    root = shutil.copytree(i2v_root["comfyui-i2v-fp8-scaled"].path, tmp_path / "models")
    dit = _sparse_i2v(root / "diffusion_models" / "wan2.1_i2v_480p_14B_fp8_scaled.safetensors")
    st = {s.spec.id: s for s in scan([root]).status()}
    assert st["wan2.1-i2v-14b-480p"].found == {"transformer": str(dit)}
    assert any("clip_vision_h.safetensors" in m for m in st["wan2.1-i2v-14b-480p"].missing)
    real = _sparse_clip_h(root / "clip_vision" / "clip_vision_h_real.safetensors")
    inv = scan([root])
    st = {s.spec.id: s for s in inv.status()}
    assert st["wan2.1-i2v-14b-480p"].found["clip"] == str(real)
    assert st[tiny.I2V].runnable and inv.resolve(tiny.I2V).clip.path == root / "clip_vision" / "clip_vision_h.safetensors"
    assert (inv.resolve(tiny.I2V).clip.ident.extra["width"], [f for f in inv.files if f.path == real][0].ident.extra) \
        == (tiny.CLIP_WIDTH, {"width": 1280, "ffn": 5120, "layers": 32, "patch": 14, "image_size": 224})


def test_loras_are_not_scanned_as_model_files(i2v_root, tmp_path):
    root = shutil.copytree(i2v_root["comfyui-i2v-fp8-scaled"].path, tmp_path / "models")
    lora = root / "loras" / "wan" / "some_lora.safetensors"
    lora.parent.mkdir(parents=True)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 32)}, str(lora))
    inv = scan([root])
    assert not any(Path(f.path) == lora for f in inv.files) and inv.problems() == []
    assert inv.runnable_ids() == [tiny.I2V]


# ---- the CLIP encoder -----------------------------------------------------------------------------------
def official_vit_31_blocks(sd: dict, heads: int, x: torch.Tensor) -> torch.Tensor:
    """wan/modules/clip.py VisionTransformer.forward(use_31_block=True), transcribed on the official .pth
    names: patch conv, class token, positions, pre-norm, then every block but the last."""
    import torch.nn.functional as F
    v = {k[len("visual."):]: t.float() for k, t in sd.items() if k.startswith("visual.")}
    b = x.shape[0]
    x = F.conv2d(x, v["patch_embedding.weight"], stride=v["patch_embedding.weight"].shape[-1]).flatten(2).permute(0, 2, 1)
    x = torch.cat([v["cls_embedding"].expand(b, -1, -1), x], dim=1) + v["pos_embedding"]
    dim = x.shape[-1]
    x = F.layer_norm(x, (dim,), v["pre_norm.weight"], v["pre_norm.bias"], 1e-5)
    layers = 1 + max(int(k.split(".")[1]) for k in v if k.startswith("transformer."))
    for i in range(layers - 1):
        p = lambda n: v[f"transformer.{i}.{n}"]  # noqa: E731
        h = F.layer_norm(x, (dim,), p("norm1.weight"), p("norm1.bias"), 1e-5)
        q, k, vv = F.linear(h, p("attn.to_qkv.weight"), p("attn.to_qkv.bias")).view(b, -1, 3, heads, dim // heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), vv.transpose(1, 2)).transpose(1, 2)
        x = x + F.linear(a.reshape(b, -1, dim), p("attn.proj.weight"), p("attn.proj.bias"))
        h = F.layer_norm(x, (dim,), p("norm2.weight"), p("norm2.bias"), 1e-5)
        x = x + F.linear(F.gelu(F.linear(h, p("mlp.0.weight"), p("mlp.0.bias"))), p("mlp.2.weight"), p("mlp.2.bias"))
    return x


def test_the_clip_encoder_gives_the_same_features_from_the_comfyui_and_official_files(i2v_root):
    from wan_app.checkpoints.headers import load_pth
    comfy = scan([i2v_root["comfyui-i2v-fp8-scaled"].path]).resolve(tiny.I2V).clip
    official = scan([i2v_root["official-i2v"].path]).resolve(tiny.I2V).clip
    assert comfy.path.name == "clip_vision_h.safetensors" and comfy.dtype == "fp16"
    assert official.path.name == "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    pixel = i2v.clip_input(i2v.image_tensor(rgb(96, 64)))
    assert pixel.shape == (1, 3, 224, 224)
    a = i2v.clip_features(build_clip_vision(comfy), pixel)
    b = i2v.clip_features(build_clip_vision(official), pixel)
    assert a.shape == (1, tiny.CLIP_TOKENS, tiny.CLIP_WIDTH) and torch.equal(a, b)
    # and they are what the official vision tower computes from its own .pth (not merely self-consistent)
    want = official_vit_31_blocks(load_pth(official.path), tiny.CLIP_WIDTH // 80, pixel)
    assert (a - want).abs().max().item() < 1e-4
    # the official features skip the last block and the post-norm: the model's last output differs
    last = build_clip_vision(comfy)(pixel_values=pixel).last_hidden_state
    assert (last - a).abs().max().item() > 0.1


def test_clip_input_is_a_straight_bicubic_resize_with_clip_normalisation():
    img = i2v.image_tensor(np.full((10, 30, 3), 255, dtype=np.uint8))     # white, 3:1, no crop possible
    x = i2v.clip_input(img)
    want = (1.0 - torch.tensor(i2v.CLIP_MEAN)) / torch.tensor(i2v.CLIP_STD)
    assert x.shape == (1, 3, 224, 224) and torch.allclose(x[0, :, 0, 0], want) and torch.allclose(x[0, :, -1, -1], want)


# ---- images and their checks ----------------------------------------------------------------------------
def test_prepare_image_is_plain_bicubic_without_clamp_or_crop():
    img = rgb(96, 64)
    assert torch.equal(i2v.prepare_image(img, 96, 64), i2v.image_tensor(img))     # same size: unchanged
    out = i2v.prepare_image(img, 64, 48)
    assert out.shape == (3, 48, 64)
    assert out.max().item() > 1.0 or out.min().item() < -1.0     # bicubic overshoot is kept, as officially
    assert i2v.image_tensor(img).min().item() >= -1.0


def test_ti2v_prepare_scales_to_cover_then_crops_the_centre():
    a = np.zeros((100, 300, 3), dtype=np.uint8)
    a[:, 100:200] = 255                                # a white middle third
    x = i2v.prepare_image_ti2v(a, 64, 64)              # 3:1 scaled to cover 64×64 (192×64), centre 64 kept
    assert x.shape == (3, 64, 64) and x[:, 8:-8, 8:-8].min().item() > 0.9


def test_the_float_vae_path_equals_the_codecs_uint8_path_on_unresized_frames(references):
    from wan_app.vae_codec import VaeCodec
    codec = VaeCodec(references[tiny.I2V].vae, "cpu")
    frames = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    video = torch.stack([i2v.image_tensor(f) for f in frames], dim=1)[None]
    assert (i2v.encode_video(codec, video) - codec.encode(frames)).abs().max().item() < 1e-4
    assert i2v.ti2v_condition(codec, video[0, :, 0]).shape == (1, 16, 1, 4, 4)


def test_the_mask_marks_the_image_frames_as_the_official_code():
    m = i2v.mask(9, 6, 8)
    assert m.shape == (1, 4, 3, 6, 8)
    assert (m[0, :, 0] == 1).all() and (m[0, :, 1:] == 0).all()
    f = i2v.mask(81, 2, 2, last=True)
    assert f.shape == (1, 4, 21, 2, 2)
    assert (f[0, :, 0] == 1).all() and (f[0, :, 1:-1] == 0).all()
    assert (f[0, 3, -1] == 1).all() and (f[0, :3, -1] == 0).all()      # only channel 3 of the last latent frame
    with pytest.raises(UserError, match="frames"):
        i2v.mask(10, 2, 2)


def test_the_conditioning_clip_is_the_image_then_zeros_and_flf2v_ends_on_the_last_image():
    first, last = torch.ones(3, 4, 4), -torch.ones(3, 4, 4)
    c = i2v.conditioning_clip(first, 9)
    assert c.shape == (1, 3, 9, 4, 4) and torch.equal(c[0, :, 0], first) and (c[0, :, 1:] == 0).all()
    c = i2v.conditioning_clip(first, 9, last)
    assert torch.equal(c[0, :, -1], last) and (c[0, :, 1:-1] == 0).all()


def _write_animated(path: Path) -> Path:
    frames = [rgb(16, 16, s) for s in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def _write_truncated(path: Path) -> Path:
    rgb(64, 64).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("field", ["image", "last_image"])
@pytest.mark.parametrize("make, words", [
    (lambda d: d / "nope.png", "does not exist"),
    (lambda d: d, "is not a file"),
    (lambda d: (d / "notes.png", (d / "notes.png").write_text("hello"))[0], "cannot be read as an image"),
    (lambda d: _write_truncated(d / "half.png"), "cannot be read as an image"),
    (lambda d: _write_animated(d / "moving.gif"), "is animated"),
    (lambda d: np.zeros((0, 10, 3), dtype=np.uint8), "is empty"),
    (lambda d: np.zeros((8, 8, 3), dtype=np.float32), "give an H×W×3 uint8 RGB image"),
])
def test_a_bad_image_is_refused_naming_the_field(tmp_path, field, make, words):
    with pytest.raises(UserError) as e:
        i2v.check_image(make(tmp_path), field)
    assert e.value.field == field and words in str(e.value) and e.value.fix


def test_a_good_image_is_read_as_rgb_at_its_size(tmp_path):
    p = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((20, 30, 4), dtype=np.uint8)).save(p)
    assert i2v.check_image(p) == (30, 20) and i2v.load_image(p).mode == "RGB"
    d = i2v.describe_image(p)
    assert (d["width"], d["height"], d["name"], len(d["sha256"])) == (30, 20, "rgba.png", 64)


def test_a_last_frame_of_another_shape_is_refused_and_one_within_3_percent_is_taken():
    i2v.check_last_image((832, 480), (1664, 960))
    i2v.check_last_image((832, 480), (820, 480))                       # 1.5% narrower
    with pytest.raises(UserError) as e:
        i2v.check_last_image(rgb(832, 480), rgb(480, 832))
    assert e.value.field == "last_image" and "832×480" in str(e.value) and e.value.fix


@pytest.mark.parametrize("model, image, last, field, words", [
    ("wan2.1-t2v-14b", "a.png", None, "image", "wan2.2-i2v-a14b"),
    ("wan2.2-i2v-a14b", None, None, "image", "makes a video from an image"),
    ("wan2.2-i2v-a14b", "a.png", "b.png", "last_image", "wan2.1-flf2v-14b-720p"),
    ("wan2.1-flf2v-14b-720p", "a.png", None, "last_image", "needs a last frame"),
    ("wan2.1-flf2v-14b-720p", None, "b.png", "last_image", "without a first frame"),
])
def test_which_images_a_model_takes_is_checked_naming_the_field(model, image, last, field, words):
    with pytest.raises(UserError) as e:
        i2v.check_inputs(catalog.get(model), image, last)
    assert e.value.field == field and words in str(e.value)


def test_the_images_a_model_takes_pass_the_check():
    i2v.check_inputs(catalog.get("wan2.1-t2v-14b"), None, None)
    i2v.check_inputs(catalog.get("wan2.2-ti2v-5b"), None, None)          # TI2V: the image is optional
    i2v.check_inputs(catalog.get("wan2.2-ti2v-5b"), "a.png", None)
    i2v.check_inputs(catalog.get("wan2.1-i2v-14b-480p"), "a.png", None)
    i2v.check_inputs(catalog.get("wan2.1-flf2v-14b-720p"), "a.png", "b.png")


# ---- parity with diffusers' WanImageToVideoPipeline ------------------------------------------------------
class OfficialSigmaUniPC:
    """diffusers' UniPC fed the official σ (linspace from float32(0.999) to 0), so the loops are compared,
    not the schedules (as in tests/test_engine.py)."""

    @staticmethod
    def make(shift: float):
        from diffusers import UniPCMultistepScheduler

        class _S(UniPCMultistepScheduler):
            def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
                s_max = torch.tensor(0.999, dtype=torch.float32).item()
                super().set_timesteps(sigmas=np.linspace(s_max, 0, num_inference_steps + 1)[:-1], device=device)
        return _S(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                  solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero")


def official_high_noise_steps(steps: int, shift: float, boundary: float) -> int:
    """Steps on the high-noise expert in the official Wan2.2 image2video.py: t ≥ boundary·1000, with
    t = int64(σ'·1000) of the shifted official σ."""
    raw = np.linspace(torch.tensor(0.999, dtype=torch.float32).item(), 0, steps + 1)[:-1]
    t = (shift * raw / (1 + (shift - 1) * raw) * 1000).astype(np.int64)
    return int((t >= boundary * 1000).sum())


def test_the_a14b_i2v_expert_switch_step_of_the_official_schedule():
    assert official_high_noise_steps(40, 5.0, 0.9) == 15       # the official 40 steps: 15 high, 25 low
    assert official_high_noise_steps(10, 5.0, 0.9) == 4


# the pipeline is handed our resized [−1, 1] frames as tensors; it takes them as they are (and says the
# [−1, 1] range is deprecated: a [0, 1] tensor would not do, bicubic overshoot takes it below 0 too)
@pytest.mark.filterwarnings("ignore:Passing `image` as torch tensor:FutureWarning")
@pytest.mark.parametrize("layout, steps", [("diffusers-i2v", 6), ("diffusers-i2v-a14b", 10), ("diffusers-flf2v", 6)])
def test_image_to_video_latents_equal_wanimagetovideopipeline(i2v_root, tmp_path, layout, steps):
    """Our conditioning (i2v.image_condition + image_clip → sampler.ImageToVideo, our loop) against diffusers'
    WanImageToVideoPipeline on the same weights, noise, embeddings and official σ, fp32. Both get the
    same resized frames and the same CLIP features, because that is where the pipeline departs from the
    official code (checked below): its VAE input is resized with PIL's Lanczos and its CLIP input with
    CLIPImageProcessor (shortest side to 224, then a centre crop), where the official code resizes both
    with plain bicubic and CLIP's straight to 224×224. The mask (FLF2V's too) and the zero frames agree."""
    from diffusers import WanImageToVideoPipeline
    model_id = LAYOUTS[layout][0]
    engine = Engine([i2v_root[layout].path], tmp_path, hardware=CPU)
    src, src_last = rgb(96, 64, 1), rgb(96, 64, 2)
    w, h = i2v.output_size(catalog.get(model_id), *src.size)
    assert (w, h) == (64, 48)
    src.save(tmp_path / "first.png")
    src_last.save(tmp_path / "last.png")
    flf = catalog.get(model_id).image_input == "image+last"
    job = clip_job(engine, Request(model=model_id, prompt="a boat", frames=9, width=w, height=h, steps=steps, seed=4,
                                   image=str(tmp_path / "first.png"),
                                   last_image=str(tmp_path / "last.png") if flf else None),
                   tmp_path / "x.mp4")
    host = load(engine, job)
    comps, spec, r = host.components, job.spec, job.request
    cond, uncond = host.encode(r.prompt, r.negative_prompt)
    noise = sampler.initial_noise(spec, r)
    flf = spec.image_input == "image+last"
    first = i2v.prepare_image(src, w, h)
    last = i2v.prepare_image(src_last, w, h) if flf else None
    y = i2v.image_condition(host.codec, first, r.frames, last)
    assert y.shape == (1, 20, 3, h // 8, w // 8)
    feats = i2v.image_clip(comps.clip, [i2v.image_tensor(src)] + ([i2v.image_tensor(src_last)] if flf else [])) \
        if spec.clip else None
    seen = []
    ours = sampler.sample(r, spec, job.plan, host.placement, noise.clone(), cond, uncond, seen.append,
                          sampler.ImageToVideo(y, feats)).latents

    pipe = WanImageToVideoPipeline(tokenizer=comps.tokenizer, text_encoder=comps.text_encoder, vae=comps.vae,
                                   scheduler=OfficialSigmaUniPC.make(r.shift), transformer=comps.transformer,
                                   transformer_2=comps.transformer_2, image_processor=None, image_encoder=None,
                                   boundary_ratio=r.boundary)
    if feats is not None:
        # the pipeline refuses image and image_embeds together, yet needs the image for the VAE: hand it
        # our features where it would compute its own
        pipe.encode_image = lambda *a, **k: feats
    extra = dict(last_image=last[None]) if flf else {}
    if r.boundary is not None:
        extra["guidance_scale_2"] = r.guidance_2
    theirs = pipe(image=first[None], prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(),
                  height=h, width=w, num_frames=r.frames, num_inference_steps=r.steps, guidance_scale=r.guidance,
                  output_type="latent", **extra).frames
    diff = (ours - theirs.float()).abs().max().item()
    print(f"max abs diff ImageToVideo vs WanImageToVideoPipeline ({layout}): {diff:.3e}")
    assert diff <= 1e-4, diff

    # not vacuous: the run moved far from the noise; the first latent frame was denoised, not pinned to the
    # image latents; and without y and CLIP the model would not even take the latents (36 channels)
    assert (ours - noise).abs().max().item() > 0.5
    assert (ours[:, :, 0] - y[:, 4:, 0]).abs().max().item() > 1e-2
    other = i2v.image_condition(host.codec, i2v.prepare_image(rgb(96, 64, 9), w, h), r.frames, last)
    moved = sampler.sample(r, spec, job.plan, host.placement, noise.clone(), cond, uncond, lambda e: None,
                           sampler.ImageToVideo(other, feats)).latents
    assert (moved - ours).abs().max().item() > 1e-2

    if spec.experts == 2:      # the expert switches at the official step for boundary 0.9
        [switch] = [e for e in seen if isinstance(e, events.ExpertSwitch)]
        assert (switch.step, switch.from_expert, switch.to_expert) == (official_high_noise_steps(steps, r.shift, 0.9),
                                                                       "high", "low") == (4, "high", "low")
    if spec.clip:              # where the pipeline departs: its own CLIP preprocessing gives other features
        from transformers import CLIPImageProcessor
        pipe.image_encoder, pipe.image_processor = comps.clip, CLIPImageProcessor()
        theirs_feats = type(pipe).encode_image(pipe, src, torch.device("cpu"))
        assert theirs_feats.shape == feats[:1].shape and (theirs_feats - feats[:1]).abs().max().item() > 1e-2
    # … and its own resize of the image for the VAE (PIL Lanczos) is not the official bicubic
    lanczos = pipe.video_processor.preprocess(src, height=h, width=w)[0]
    assert (lanczos - first).abs().max().item() > 1e-2
