"""Tiny random Wan models, the same weights written in every on-disk layout the app reads.

`python -m wan_app.tiny DIR` writes them (one sub-folder per layout, each a models folder on its own), so
the whole app can be tried, and tested, on a CPU in seconds without downloading 30 GB.
Weights are rounded to values bf16 and fp16 both represent exactly, so every 16/32-bit layout loads to
the very same numbers; fp8 layouts differ by quantisation error only.
"""
from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import catalog
from .checkpoints import convert
from .checkpoints.load import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, Components

TEXT_DIM = 32
VOCAB = 64
_CORPUS = ["a cat walks on the grass", "a dog runs in the park at night", "the sea and the sky are blue",
           "red fox jumps over the lazy dog", "a small boat on a calm lake", "snow falls on a quiet city street",
           "色调艳丽，过曝，静态", "a person walking"]


@dataclass(frozen=True)
class LayoutInfo:
    model_id: str
    path: Path
    dtype: str


# ---------------------------------------------------------------------------------------------- reference
def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights that survive bf16 and fp16 exactly (bf16-rounded, no fp16 subnormals)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name or name.endswith("gamma"):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif p.ndim >= 2:
                v = torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5)
            else:
                v = 0.02 * torch.randn(p.shape, generator=g)
            v = v.to(torch.bfloat16).float()
            v[v.abs() < 2 ** -12] = 0.0
            p.copy_(v)
    return module.eval().requires_grad_(False)


def _transformer(in_ch: int, seed: int, out_ch: int | None = None, clip: bool = False, first_last: bool = False):
    """A tiny DiT; `clip`: Wan2.1 I2V's image embedder and image key/values (as diffusers' I2V configs:
    image_dim = CLIP width, added_kv_proj_dim = dim); `first_last`: FLF2V's position table of two images."""
    from diffusers import WanTransformer3DModel
    spec_arch = catalog.MODELS["tiny-wan2.1-t2v"].arch
    return _randomize(WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=spec_arch.num_heads, attention_head_dim=spec_arch.head_dim,
        in_channels=in_ch, out_channels=out_ch or in_ch, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=spec_arch.ffn_dim,
        num_layers=spec_arch.num_layers, rope_max_seq_len=1024,
        image_dim=CLIP_WIDTH if clip else None, added_kv_proj_dim=spec_arch.dim if clip else None,
        pos_embed_seq_len=2 * CLIP_TOKENS if first_last else None), seed)


# A tiny CLIP vision tower with the real geometry (224 px, patch 14: 257 tokens, head width 80) and 3 blocks,
# so hidden_states[-2] (the official "all but the last block") differs from the last.
CLIP_WIDTH, CLIP_LAYERS, CLIP_TOKENS, CLIP_PROJ = 160, 3, 257, 16


def _clip_vision(seed: int = 30):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    cfg = CLIPVisionConfig(hidden_size=CLIP_WIDTH, intermediate_size=2 * CLIP_WIDTH, num_hidden_layers=CLIP_LAYERS,
                           num_attention_heads=CLIP_WIDTH // 80, image_size=224, patch_size=14, hidden_act="gelu",
                           layer_norm_eps=1e-5, projection_dim=CLIP_PROJ)
    return _randomize(CLIPVisionModel(cfg), seed)


def _clip_head(seed: int = 31) -> torch.Tensor:
    """The projection head the real files carry (unused by Wan): ComfyUI's visual_projection, official visual.head."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(CLIP_PROJ, CLIP_WIDTH, generator=g) / CLIP_WIDTH ** 0.5).to(torch.bfloat16).float()


def _text_encoder():
    from transformers import UMT5Config, UMT5EncoderModel
    cfg = UMT5Config(vocab_size=VOCAB, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                     use_cache=False, layer_norm_epsilon=1e-6)
    return _randomize(UMT5EncoderModel(cfg), 7)


def _vae(kind: str):
    from diffusers import AutoencoderKLWan
    if kind == "wan2.2":
        return _randomize(AutoencoderKLWan(base_dim=8, decoder_base_dim=12, z_dim=48, is_residual=True, patch_size=2,
                                           in_channels=12, out_channels=12, scale_factor_spatial=16,
                                           latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD), 11)
    return _randomize(AutoencoderKLWan(base_dim=8, z_dim=16), 10)   # real 2.1 structure (dim_mult, 2 res blocks)


def spm_bytes() -> bytes:
    """A tiny sentencepiece unigram model, trained in-process (deterministic, offline)."""
    import sentencepiece as spm
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_CORPUS * 20), model_writer=out, vocab_size=VOCAB - 4,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, num_threads=1, minloglevel=2,
                                   character_coverage=1.0)
    return out.getvalue()


def reference_components(model_id: str) -> Components:
    """Fresh in-memory modules holding exactly the weights build_all writes for this model."""
    from .checkpoints.load import tokenizer_from_spm
    spec = catalog.get(model_id)
    in_ch = spec.arch.in_channels
    two = spec.experts == 2
    if spec.image_conditioning == "channels":       # I2V / FLF2V: their own seeds, 36 channels in, 16 out
        dit = dict(out_ch=spec.arch.out_channels, clip=spec.clip, first_last=spec.image_input == "image+last")
        seeds = {I2V: (21, None), I2V_A14: (22, 23), FLF: (24, None)}[model_id]
        return Components(spec=spec, transformer=_transformer(in_ch, seeds[0], **dit),
                          transformer_2=_transformer(in_ch, seeds[1], **dit) if two else None, vae=_vae(spec.vae),
                          text_encoder=_text_encoder(), tokenizer=tokenizer_from_spm(spm_bytes()),
                          sources={"all": "wan_app.tiny.reference_components"},
                          clip=_clip_vision() if spec.clip else None)
    return Components(spec=spec, transformer=_transformer(in_ch, 1 if not two else 2),
                      transformer_2=_transformer(in_ch, 3) if two else None, vae=_vae(spec.vae),
                      text_encoder=_text_encoder(), tokenizer=tokenizer_from_spm(spm_bytes()),
                      sources={"all": "wan_app.tiny.reference_components"})


# ---------------------------------------------------------------------------------------------- writing
def _save_st(sd: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _save_pth(sd: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.contiguous() for k, v in sd.items()}, tmp)
    os.replace(tmp, path)


def _official_dit_config(t) -> dict:
    c = t.config
    kind = ("t2v" if c.in_channels == 16 else "ti2v" if c.in_channels == c.out_channels else
            "flf2v" if c.pos_embed_seq_len else "i2v")
    return {"_class_name": "WanModel", "model_type": kind,
            "dim": c.num_attention_heads * c.attention_head_dim, "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim,
            "in_dim": c.in_channels, "out_dim": c.out_channels, "num_heads": c.num_attention_heads,
            "num_layers": c.num_layers, "text_len": 512, "eps": 1e-6, "patch_size": list(c.patch_size)}


def _cast(sd, dtype):
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def _comfy_dit(t, dtype: str, prefix: bool) -> dict[str, torch.Tensor]:
    sd = convert.dit_diffusers_to_official(t.state_dict())
    linears = [k for k, v in sd.items() if k.startswith("blocks.") and v.ndim == 2 and k.endswith(".weight")]
    if dtype == "fp8_scaled":
        out = convert.quantize_scaled_fp8(sd, linears)
    elif dtype == "fp8":   # ComfyUI's fp8_e4m3fn: block linears in fp8, the rest fp16
        out = {k: v.to(torch.float8_e4m3fn) if k in linears else v.half() for k, v in sd.items()}
    else:
        out = _cast(sd, {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype])
    if dtype in ("fp16", "bf16"):
        out["patch_embedding.weight"] = sd["patch_embedding.weight"].float()   # as in the real ComfyUI files
    return {("model.diffusion_model." + k if prefix else k): v for k, v in out.items()}


def _comfy_umt5(te, spm: bytes, scaled: bool) -> dict[str, torch.Tensor]:
    sd = {k: v for k, v in te.state_dict().items() if k != "encoder.embed_tokens.weight"}
    if scaled:   # ComfyUI scales the block linears only, without scale_input
        linears = [k for k in sd if k.startswith("encoder.block.") and "DenseReluDense" in k or "SelfAttention.q" in k
                   or "SelfAttention.k" in k or "SelfAttention.v" in k or "SelfAttention.o" in k]
        sd = {k: v for k, v in convert.quantize_scaled_fp8(sd, linears).items()
              if not k.endswith(".scale_input") and k != "scaled_fp8"}
    else:
        sd = _cast(sd, torch.float16)
    sd["spiece_model"] = torch.frombuffer(bytearray(spm), dtype=torch.uint8)
    return sd


def _official_vae(vae, kind: str) -> dict[str, torch.Tensor]:
    f = convert.vae22_diffusers_to_official if kind == "wan2.2" else convert.vae21_diffusers_to_official
    return f(vae.state_dict())


def _write_tokenizer(spm: bytes, folder: Path) -> None:
    from .checkpoints.load import tokenizer_from_spm
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_from_spm(spm).save_pretrained(str(folder))
    (folder / "spiece.model").write_bytes(spm)


def _official_clip(clip) -> dict[str, torch.Tensor]:
    """As the official models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth: the whole CLIP, so a few
    text-tower tensors and the logit scale too (the loader takes the vision tower only)."""
    from .checkpoints.clip_vision import hf_to_official
    sd = hf_to_official(clip.state_dict(), head=_clip_head().t().contiguous())
    g = torch.Generator().manual_seed(32)
    sd["textual.token_embedding.weight"] = torch.randn(VOCAB, 16, generator=g)
    sd["textual.head.0.weight"] = torch.randn(16, 16, generator=g)
    sd["log_scale"] = torch.tensor(2.6592)
    return sd


def _comfy_clip(clip) -> dict[str, torch.Tensor]:
    """As ComfyUI's clip_vision_h.safetensors: CLIPVisionModelWithProjection's names (transformers 4:
    `vision_model.` prefix, `visual_projection`), fp16."""
    sd = {"vision_model." + k: v for k, v in clip.state_dict().items()}
    sd["visual_projection.weight"] = _clip_head()
    return _cast(sd, torch.float16)


def _write_xlmr_decoy(folder: Path) -> None:
    """The official I2V folders also hold CLIP's text tokenizer (xlm-roberta-large/); the scan must not take
    it for umT5's. A small one of the same kind (XLMRobertaTokenizer files) stands in for it."""
    from transformers import XLMRobertaTokenizer
    folder.mkdir(parents=True, exist_ok=True)
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + \
            [(w, -float(i)) for i, w in enumerate(sorted({w for line in _CORPUS for w in line.split()}))] + \
            [("<mask>", 0.0)]
    XLMRobertaTokenizer(vocab=vocab).save_pretrained(str(folder))


def _write_official(root: Path, c: Components, spm: bytes) -> None:
    experts = [("high_noise_model", c.transformer), ("low_noise_model", c.transformer_2)] if c.transformer_2 else [("", c.transformer)]
    for sub, t in experts:
        d = root / sub if sub else root
        _save_st(convert.dit_diffusers_to_official(t.state_dict()), d / "diffusion_pytorch_model.safetensors")
        (d / "config.json").write_text(json.dumps(_official_dit_config(t), indent=2))
    _save_pth(_cast(convert.umt5_hf_to_official(c.text_encoder.state_dict()), torch.bfloat16),
              root / "models_t5_umt5-xxl-enc-bf16.pth")
    _save_pth(_official_vae(c.vae, c.spec.vae), root / ("Wan2.2_VAE.pth" if c.spec.vae == "wan2.2" else "Wan2.1_VAE.pth"))
    _write_tokenizer(spm, root / "google" / "umt5-xxl")
    if c.clip is not None:
        _save_pth(_official_clip(c.clip), root / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
        _write_xlmr_decoy(root / "xlm-roberta-large")


def _write_diffusers(root: Path, c: Components) -> None:
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=c.spec.shift)
    if c.spec.image_conditioning == "channels":     # as Wan-AI/Wan2.1-I2V-14B-480P-Diffusers and the like
        from transformers import CLIPImageProcessor
        pipe = WanImageToVideoPipeline(tokenizer=c.tokenizer, text_encoder=c.text_encoder, vae=c.vae, scheduler=sched,
                                       image_processor=CLIPImageProcessor() if c.clip is not None else None,
                                       image_encoder=c.clip, transformer=c.transformer, transformer_2=c.transformer_2,
                                       boundary_ratio=c.spec.boundary)
    else:
        pipe = WanPipeline(tokenizer=c.tokenizer, text_encoder=c.text_encoder, transformer=c.transformer,
                           transformer_2=c.transformer_2, vae=c.vae, scheduler=sched, boundary_ratio=c.spec.boundary)
    pipe.save_pretrained(str(root))


def _write_comfy(root: Path, c: Components, spm: bytes, dit_dtype: str, name: str, prefix: bool,
                 te_scaled: bool) -> None:
    experts = [("high_noise", c.transformer), ("low_noise", c.transformer_2)] if c.transformer_2 else [("", c.transformer)]
    for tag, t in experts:
        fname = name.format(tag=tag + "_" if tag else "", dtype=dit_dtype)
        _save_st(_comfy_dit(t, dit_dtype, prefix), root / "diffusion_models" / fname)
    te_name = "umt5_xxl_fp8_e4m3fn_scaled.safetensors" if te_scaled else "umt5_xxl_fp16.safetensors"
    _save_st(_comfy_umt5(c.text_encoder, spm, te_scaled), root / "text_encoders" / te_name)
    vae_name = "wan2.2_vae.safetensors" if c.spec.vae == "wan2.2" else "wan_2.1_vae.safetensors"
    _save_st(_cast(_official_vae(c.vae, c.spec.vae), torch.float16), root / "vae" / vae_name)
    if c.clip is not None:
        _save_st(_comfy_clip(c.clip), root / "clip_vision" / "clip_vision_h.safetensors")


T21, A14, TI2V = "tiny-wan2.1-t2v", "tiny-wan2.2-t2v-a14b", "tiny-wan2.2-ti2v-5b"
I2V, I2V_A14, FLF = "tiny-wan2.1-i2v", "tiny-wan2.2-i2v-a14b", "tiny-wan2.1-flf2v"


def build_i2v(root: Path) -> dict[str, LayoutInfo]:
    """The image-to-video layouts only (Wan2.1 I2V with its CLIP, the Wan2.2 I2V A14B pair, FLF2V), in the
    diffusers, official and ComfyUI layouts; returns layout name -> LayoutInfo as build_all."""
    root = Path(root)
    spm = spm_bytes()
    refs = {m: reference_components(m) for m in (I2V, I2V_A14, FLF)}
    out: dict[str, LayoutInfo] = {}

    def add(name, model_id, dtype, write):
        write(root / name)
        out[name] = LayoutInfo(model_id, root / name, dtype)

    for model_id, tag in ((I2V, "i2v"), (I2V_A14, "i2v-a14b"), (FLF, "flf2v")):
        add(f"diffusers-{tag}", model_id, "fp32", lambda p, m=model_id: _write_diffusers(p, refs[m]))
        add(f"official-{tag}", model_id, "fp32", lambda p, m=model_id: _write_official(p, refs[m], spm))
    # as the Comfy-Org downloads: 2.1 I2V and the 2.2 experts in scaled fp8, FLF2V fp16 (this one prefixed)
    add("comfyui-i2v-fp8-scaled", I2V, "fp8_scaled",
        lambda p: _write_comfy(p, refs[I2V], spm, "fp8_scaled", "wan2.1_i2v_480p_tiny_fp8_scaled.safetensors", False, True))
    add("comfyui-i2v-a14b-fp8-scaled", I2V_A14, "fp8_scaled",
        lambda p: _write_comfy(p, refs[I2V_A14], spm, "fp8_scaled", "wan2.2_i2v_{tag}tiny_fp8_scaled.safetensors", False, True))
    add("comfyui-flf2v", FLF, "fp16",
        lambda p: _write_comfy(p, refs[FLF], spm, "fp16", "wan2.1_flf2v_720p_tiny_fp16.safetensors", True, False))
    return out


def build_all(root: Path, i2v: bool = False) -> dict[str, LayoutInfo]:
    """Write every layout under root/<layout>/; returns layout name -> (model id, folder, DiT dtype).
    `i2v` adds the image-to-video layouts (build_i2v)."""
    root = Path(root)
    spm = spm_bytes()
    refs = {m: reference_components(m) for m in (T21, A14, TI2V)}
    out: dict[str, LayoutInfo] = {}

    def add(name, model_id, dtype, write):
        write(root / name)
        out[name] = LayoutInfo(model_id, root / name, dtype)

    add("diffusers-t2v", T21, "fp32", lambda p: _write_diffusers(p, refs[T21]))
    add("diffusers-a14b", A14, "fp32", lambda p: _write_diffusers(p, refs[A14]))
    add("diffusers-ti2v", TI2V, "fp32", lambda p: _write_diffusers(p, refs[TI2V]))
    add("official-t2v", T21, "fp32", lambda p: _write_official(p, refs[T21], spm))
    add("official-a14b", A14, "fp32", lambda p: _write_official(p, refs[A14], spm))
    add("official-ti2v", TI2V, "fp32", lambda p: _write_official(p, refs[TI2V], spm))
    t21 = "wan2.1_t2v_tiny_{dtype}.safetensors"
    for dt in ("fp16", "bf16", "fp8"):
        add(f"comfyui-{dt}", T21, dt,
            lambda p, dt=dt: _write_comfy(p, refs[T21], spm, dt, t21.replace("{dtype}", "fp8_e4m3fn" if dt == "fp8" else dt), True, False))
    add("comfyui-fp8-scaled", T21, "fp8_scaled",
        lambda p: _write_comfy(p, refs[T21], spm, "fp8_scaled", "wan2.1_t2v_tiny_fp8_scaled.safetensors", False, True))
    add("comfyui-a14b-fp8-scaled", A14, "fp8_scaled",
        lambda p: _write_comfy(p, refs[A14], spm, "fp8_scaled", "wan2.2_t2v_{tag}tiny_fp8_scaled.safetensors", False, True))
    add("comfyui-ti2v", TI2V, "fp16",
        lambda p: _write_comfy(p, refs[TI2V], spm, "fp16", "wan2.2_ti2v_tiny_fp16.safetensors", False, False))
    if i2v:
        out.update(build_i2v(root))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m wan_app.tiny DIR   (writes tiny random Wan models in every layout under DIR)")
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    layouts = build_all(Path(argv[0]), i2v=True)
    for name, info in layouts.items():
        print(f"{name:26s} {info.model_id:24s} {info.dtype:11s} {info.path}")
    print(f"\nPoint the app's models folder at {argv[0]} (or any one sub-folder) to run the tiny models.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
