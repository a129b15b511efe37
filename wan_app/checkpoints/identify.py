"""Say what a checkpoint is from its tensor names and shapes — never from its file name.

Three namings exist for the same weights: the official Wan code's ("official"), diffusers' ("diffusers") and,
for the text encoder, transformers' ("hf"). ComfyUI files use the official/HF names, sometimes with a
`model.diffusion_model.` prefix and sometimes in scaled fp8 (`scale_weight` next to each fp8 weight).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..catalog import Arch
from .headers import ST_DTYPES, TensorInfo

COMFY_PREFIX = "model.diffusion_model."
_BLOCK = re.compile(r"^(?:blocks|encoder\.block|block)\.(\d+)\.")


@dataclass
class Identity:
    kind: str                    # dit | text_encoder | vae | clip_vision | unknown
    naming: str = ""             # official | diffusers | hf (CLIP vision: hf | official)
    prefixed: bool = False       # keys carry model.diffusion_model.
    dtype: str = ""              # fp32 | bf16 | fp16 | fp8 | fp8_scaled
    arch: Arch | None = None     # DiT shape (head_dim still the catalog default)
    text_dim: int | None = None  # DiT: width of the text embeddings it expects
    freq_dim: int | None = None
    has_img_emb: bool = False    # I2V with CLIP (extra: image_dim; FLF2V also pos_embed_seq_len)
    d_model: int | None = None   # text encoder width
    vocab_size: int | None = None
    has_spiece: bool = False     # umT5 file with the tokenizer inside (ComfyUI)
    z_dim: int | None = None     # VAE latent channels: 16 (Wan2.1) or 48 (Wan2.2)
    extra: dict = field(default_factory=dict)
    problem: str | None = None   # names that look like a Wan part whose shapes do not fit together


def strip_prefix(infos: dict[str, TensorInfo]) -> tuple[dict[str, TensorInfo], bool]:
    if any(k.startswith(COMFY_PREFIX) for k in infos):
        return {k[len(COMFY_PREFIX):] if k.startswith(COMFY_PREFIX) else k: v for k, v in infos.items()}, True
    return infos, False


def weight_dtype(infos: dict[str, TensorInfo]) -> str:
    """The dtype most of the bytes are stored in; fp8 with per-layer scales is its own kind."""
    by: dict[str, int] = {}
    for name, t in infos.items():
        if t.dtype == "U8":      # spiece_model bytes, not weights
            continue
        by[t.dtype] = by.get(t.dtype, 0) + t.nbytes
    if not by:
        return "unknown"
    if "GGUF" in by:
        return "gguf"              # quantized per block (Q8_0, Q4_K, ...): a storage of its own
    # any fp8-stored weight makes it an fp8 file (ComfyUI keeps norms, biases and embeddings in fp16)
    if any(t.dtype.startswith("F8") and t.nbytes for t in infos.values()):
        return "fp8_scaled" if any(k.endswith(".scale_weight") for k in infos) else "fp8"
    main = max(by, key=by.get)
    return ST_DTYPES.get(main, main.lower())


def identify(infos: dict[str, TensorInfo]) -> Identity:
    keys, prefixed = strip_prefix(infos)
    dtype = weight_dtype(keys)
    try:
        return _identify(keys, prefixed, dtype)
    except (KeyError, ValueError, IndexError, TypeError, ZeroDivisionError) as e:
        # A file with some Wan names but missing tensors or odd ranks (a partial export, a merge gone wrong):
        # say so for this one file instead of failing the scan of the whole folder.
        what = f"{type(e).__name__}: {e}"[:200]
        return Identity("unknown", dtype=dtype, problem=f"its tensor names look like a Wan model, but its tensors "
                                                       f"do not fit together ({what})")


def _identify(keys: dict[str, TensorInfo], prefixed: bool, dtype: str) -> Identity:
    if "head.modulation" in keys or "scale_shift_table" in keys and "proj_out.weight" in keys:
        return _dit(keys, prefixed, dtype)
    if ("shared.weight" in keys or "encoder.embed_tokens.weight" in keys) and "encoder.final_layer_norm.weight" in keys:
        emb = keys.get("shared.weight") or keys["encoder.embed_tokens.weight"]
        return Identity("text_encoder", "hf", prefixed, dtype, d_model=emb.shape[1], vocab_size=emb.shape[0],
                        has_spiece="spiece_model" in keys)
    if "token_embedding.weight" in keys and "blocks.0.attn.q.weight" in keys:
        emb = keys["token_embedding.weight"]
        return Identity("text_encoder", "official", prefixed, dtype, d_model=emb.shape[1], vocab_size=emb.shape[0],
                        has_spiece="spiece_model" in keys)
    if (clip := _clip_vision(keys, prefixed, dtype)) is not None:
        return clip
    if "decoder.middle.0.residual.0.gamma" in keys and "conv2.weight" in keys:
        return Identity("vae", "official", prefixed, dtype, z_dim=keys["conv2.weight"].shape[0],
                        extra=_vae_base(keys, "encoder.conv1.weight"))
    if "post_quant_conv.weight" in keys and "decoder.mid_block.resnets.0.norm1.gamma" in keys:
        return Identity("vae", "diffusers", prefixed, dtype, z_dim=keys["post_quant_conv.weight"].shape[0],
                        extra=_vae_base(keys, "encoder.conv_in.weight"))
    return Identity("unknown", dtype=dtype)


def _dit(keys: dict[str, TensorInfo], prefixed: bool, dtype: str) -> Identity:
    official = "head.modulation" in keys
    name = (lambda o, d: o if official else d)
    dim = keys[name("head.modulation", "scale_shift_table")].shape[-1]
    ffn = keys[name("blocks.0.ffn.0.weight", "blocks.0.ffn.net.0.proj.weight")].shape[0]
    layers = 1 + max(int(m.group(1)) for k in keys if (m := _BLOCK.match(k)))
    patch = keys[name("patch_embedding.weight", "patch_embedding.weight")].shape
    out = keys[name("head.head.weight", "proj_out.weight")].shape[0] // (patch[2] * patch[3] * patch[4] if len(patch) == 5 else 4)
    text = keys[name("text_embedding.0.weight", "condition_embedder.text_embedder.linear_1.weight")].shape
    freq = keys[name("time_embedding.0.weight", "condition_embedder.time_embedder.linear_1.weight")].shape
    img = any(k.startswith(name("img_emb.", "condition_embedder.image_embedder.")) for k in keys)
    vace = any(k.startswith("vace_") for k in keys)
    extra = {"patch_size": tuple(patch[2:]), "vace": vace}
    if img:   # the CLIP feature width img_emb takes (1280 for ViT-H/14), and FLF2V's two-image position table
        first = keys.get(name("img_emb.proj.1.weight", "condition_embedder.image_embedder.ff.net.0.proj.weight"))
        norm = keys.get(name("img_emb.proj.0.weight", "condition_embedder.image_embedder.norm1.weight"))
        extra["image_dim"] = first.shape[-1] if first is not None else norm.shape[0]
        pos = keys.get(name("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"))
        if pos is not None:
            extra["pos_embed_seq_len"] = pos.shape[1]
    return Identity("dit", "official" if official else "diffusers", prefixed, dtype,
                    arch=Arch(dim, ffn, layers, patch[1], out), text_dim=text[1], freq_dim=freq[1], has_img_emb=img,
                    extra=extra)


# CLIP vision towers. HF names (ComfyUI's clip_vision_h.safetensors, a diffusers image_encoder/; transformers 4
# saved them under `vision_model.`, transformers 5 without it) and the official Wan .pth
# (wan/modules/clip.py: the whole XLM-RoBERTa CLIP, vision tower under `visual.`).
HF_VISION_PREFIX = "vision_model."
CLIP_HEAD_DIM = 80       # ViT-H/14: width 1280, 16 heads (open_clip ViT-H-14 config, head_width 80)


def _clip_vision(keys: dict[str, TensorInfo], prefixed: bool, dtype: str) -> Identity | None:
    hf = {k.removeprefix(HF_VISION_PREFIX): v for k, v in keys.items()}
    if "embeddings.class_embedding" in hf and "encoder.layers.0.self_attn.q_proj.weight" in hf:
        patch, pos = hf["embeddings.patch_embedding.weight"].shape, hf["embeddings.position_embedding.weight"].shape
        width, ffn, naming = hf["embeddings.class_embedding"].shape[-1], hf["encoder.layers.0.mlp.fc1.weight"].shape[0], "hf"
        layers = 1 + max(int(k.split(".")[2]) for k in hf if k.startswith("encoder.layers."))
    elif "visual.transformer.0.attn.to_qkv.weight" in keys and "visual.patch_embedding.weight" in keys:
        patch, pos = keys["visual.patch_embedding.weight"].shape, keys["visual.pos_embedding"].shape[-2:]
        width, ffn, naming = patch[0], keys["visual.transformer.0.mlp.0.weight"].shape[0], "official"
        layers = 1 + max(int(k.split(".")[2]) for k in keys if k.startswith("visual.transformer."))
    else:
        return None
    side = round((pos[0] - 1) ** 0.5)          # one class token + side² patches
    return Identity("clip_vision", naming, prefixed, dtype,
                    extra={"width": width, "ffn": ffn, "layers": layers, "patch": patch[-1],
                           "image_size": side * patch[-1]})


def _vae_base(keys, conv_in: str) -> dict:
    """The VAE's first conv width (96 for Wan2.1, 160 for Wan2.2, 8 for the tiny test VAEs)."""
    return {"base_dim": keys[conv_in].shape[0]} if conv_in in keys else {}


# What a Wan DiT shape that no catalog entry has most likely is, so the models list can say it in words.
# Image-to-video and first-last-frame models take 16 noise + 4 mask + 16 image latent channels = 36
# (Wan2.1 I2V/FLF2V 14B, Wan2.2 I2V A14B); Wan2.1 I2V also carries a CLIP image embedder (img_emb).
I2V_IN_CHANNELS = 36


def dit_shape_text(ident: Identity) -> str:
    a = ident.arch
    return f"Wan DiT dim {a.dim}, {a.num_layers} layers, in_channels {a.in_channels}"


def unsupported_reason(ident: Identity, known: bool) -> str | None:
    """None for a DiT this app can run (`known`: a catalog entry fits it, see catalog.specs_for_dit);
    else one sentence with its shape and what it probably is."""
    if ident.kind != "dit" or known:
        return None
    if ident.has_img_emb or ident.arch.in_channels == I2V_IN_CHANNELS:
        what = "an image-to-video model of a size this app does not have"
    elif ident.extra.get("vace"):
        what = "a VACE (control) model"
    else:
        what = "a shape no model in this app's catalog has"
    return f"{dit_shape_text(ident)} — {what}, not supported yet"
