"""Key maps between the official Wan names and diffusers/transformers names, and scaled-fp8 dequantization.

diffusers' own converters are used where they are right: `convert_wan_transformer_to_diffusers` for the DiT
and `convert_wan_vae_to_diffusers` for the Wan2.1 VAE (it hard-codes the real VAE's 2 residual blocks per
level, which the real files and our tiny ones have). Written here by hand, because diffusers has none:
the Wan2.2 VAE map (diffusers keeps it in scripts/convert_wan_to_diffusers.py `convert_vae_22`, not in the
library), the official umT5 `.pth` map, and the inverse maps the tiny-model writer needs.
"""
from __future__ import annotations

import re
from typing import Callable

import torch

SCALE_WEIGHT = ".scale_weight"
_DROP_SUFFIXES = (".scale_input", ".scale_weight")
_MARKERS = {"scaled_fp8", "spiece_model"}


# ---------------------------------------------------------------------------------------------- fp8
def _dtype_fn(dtype) -> Callable[[str], torch.dtype]:
    return (lambda _k: dtype) if isinstance(dtype, torch.dtype) else dtype


def dequantize(sd: dict[str, torch.Tensor], dtype: torch.dtype | Callable[[str], torch.dtype]
               ) -> dict[str, torch.Tensor]:
    """fp8 weights -> `dtype`; scaled fp8: weight · scale_weight (diffusers alone would drop the scales).

    `dtype` is one dtype, or a function of the key giving each tensor its own (a model stored in bf16
    keeps its `_keep_in_fp32_modules` in fp32). Tensors already in their dtype are passed through
    untouched, so they stay backed by the file's mmap; the others are converted one at a time.
    """
    want = _dtype_fn(dtype)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in _MARKERS or k.endswith(_DROP_SUFFIXES):
            continue
        scale = sd.get(k[: -len(".weight")] + SCALE_WEIGHT) if k.endswith(".weight") else None
        if scale is not None:
            s = scale.to(torch.float32)
            if s.ndim == 1 and v.ndim > 1:          # per-output-channel scales, should a file use them
                s = s.view(-1, *([1] * (v.ndim - 1)))
            out[k] = (v.to(torch.float32) * s).to(want(k))
        elif v.is_floating_point() and v.dtype != want(k):
            out[k] = v.to(want(k))
        else:
            out[k] = v
    return out


def keep_fp8(sd: dict[str, torch.Tensor], is_linear,
             dtype: torch.dtype | Callable[[str], torch.dtype]) -> dict[str, torch.Tensor]:
    """For an fp8 plan: the linear weights selected by `is_linear(key)` become `<layer>.weight` (fp8) +
    `<layer>.weight_scale` (0-d f32), as wan_app.fp8.ScaledFp8Linear stores them. fp8 file weights are
    kept as they are, mmap-backed, with the file's scale (1 for plain fp8 files); 16/32-bit ones are
    quantized one tensor at a time. Everything else goes through `dequantize` (into `dtype`, one dtype
    or a function of the key). So planning fp8 never makes a full-precision copy of the model (a 14B
    expert in bf16: 28.6 GB of RAM)."""
    from ..fp8 import FP8, quantize
    lin = {k for k, v in sd.items() if k.endswith(".weight") and v.ndim == 2 and is_linear(k)}
    out = dequantize({k: v for k, v in sd.items() if k not in lin}, dtype)
    for k in lin:
        w, base = sd[k], k[: -len(".weight")]
        s = sd.get(base + SCALE_WEIGHT)
        if w.dtype == FP8 and (s is None or s.numel() == 1):
            out[k] = w
            out[base + ".weight_scale"] = (s.float().reshape(()) if s is not None
                                          else torch.ones((), dtype=torch.float32))
        else:   # 16/32-bit, or a per-channel scale: requantize this one tensor
            out[k], out[base + ".weight_scale"] = quantize(dequantize({k: w, base + SCALE_WEIGHT: s} if s is not None
                                                                      else {k: w}, torch.float32)[k])
    return out


def quantize_scaled_fp8(sd: dict[str, torch.Tensor], linear_keys: list[str]) -> dict[str, torch.Tensor]:
    """The ComfyUI scaled-fp8 format (for the tiny writer): per-layer absmax scale, fp8 weight, marker."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in linear_keys:
            scale = v.float().abs().max().clamp(min=1e-12) / 448.0        # e4m3 max
            out[k] = (v.float() / scale).to(torch.float8_e4m3fn)
            base = k[: -len(".weight")]
            out[base + SCALE_WEIGHT] = scale.reshape(())
            out[base + ".scale_input"] = torch.ones((), dtype=torch.float32)
        else:
            out[k] = v.to(torch.float16) if v.is_floating_point() else v
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


# ---------------------------------------------------------------------------------------------- DiT
# diffusers' single-file converter maps the I2V names (img_emb.proj.* -> condition_embedder.image_embedder.*,
# k_img / v_img / norm_k_img -> add_k_proj / add_v_proj / norm_added_k) but not FLF2V's position table, which
# its scripts/convert_wan_to_diffusers.py renames to image_embedder.pos_embed.
_FLF_POS = ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed")


def dit_official_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    out = convert_wan_transformer_to_diffusers(dict(sd))   # it pops from its argument
    if _FLF_POS[0] in out:
        out[_FLF_POS[1]] = out.pop(_FLF_POS[0])
    return out


_DIT_INV = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    ("attn1.", "self_attn."), ("attn2.", "cross_attn."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"), ("proj_out.", "head.head."),
    ("norm2", "norm__tmp"), ("norm3", "norm2"), ("norm__tmp", "norm3"),
]


# I2V parts, mapped before the generic rules (whose norm2/norm3 swap would hit image_embedder.norm2)
_DIT_I2V_INV = [
    ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
    ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
    ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
    ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
    (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."), (".norm_added_k.", ".norm_k_img."),
]


def dit_diffusers_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k == "scale_shift_table":
            out["head.modulation"] = v
            continue
        if k == _FLF_POS[1]:
            out[_FLF_POS[0]] = v
            continue
        if k.startswith("condition_embedder.image_embedder."):
            out[next(k.replace(a, b) for a, b in _DIT_I2V_INV if k.startswith(a))] = v
            continue
        for a, b in _DIT_I2V_INV[4:]:
            k = k.replace(a, b)
        n = k.replace(".scale_shift_table", ".modulation")
        for a, b in _DIT_INV:
            n = n.replace(a, b)
        out[n] = v
    return out


# ---------------------------------------------------------------------------------------------- umT5
# Official wan/modules/t5.py T5Encoder names -> transformers UMT5EncoderModel names (per-block relative
# position bias: umT5 does not share it; the gated FFN is gate[0] (GELU branch) * fc1, then fc2).
_T5_BLOCK = {
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm1.weight": "layer.0.layer_norm.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_T5_BLOCK_INV = {v: k for k, v in _T5_BLOCK.items()}
_T5_OFFICIAL = re.compile(r"^blocks\.(\d+)\.(.+)$")
_T5_HF = re.compile(r"^encoder\.block\.(\d+)\.(.+)$")


def umt5_official_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k == "token_embedding.weight":
            out["shared.weight"] = v
        elif k == "norm.weight":
            out["encoder.final_layer_norm.weight"] = v
        elif (m := _T5_OFFICIAL.match(k)) and m.group(2) in _T5_BLOCK:
            out[f"encoder.block.{m.group(1)}.{_T5_BLOCK[m.group(2)]}"] = v
        elif k not in _MARKERS:
            out[k] = v            # left as is: load_state_dict(strict=True) names it if it is unexpected
    return out


def umt5_hf_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k == "shared.weight":
            out["token_embedding.weight"] = v
        elif k == "encoder.final_layer_norm.weight":
            out["norm.weight"] = v
        elif (m := _T5_HF.match(k)) and m.group(2) in _T5_BLOCK_INV:
            out[f"blocks.{m.group(1)}.{_T5_BLOCK_INV[m.group(2)]}"] = v
    return out


def umt5_hf_complete(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI umT5 files keep `shared.weight` only; the model ties encoder.embed_tokens to it."""
    sd = {k: v for k, v in sd.items() if k not in _MARKERS}
    if "shared.weight" not in sd and "encoder.embed_tokens.weight" in sd:
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    return sd


# ---------------------------------------------------------------------------------------------- VAE
_RES_INNER = [("norm1.gamma", "residual.0.gamma"), ("conv1.", "residual.2."), ("norm2.gamma", "residual.3.gamma"),
              ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut.")]


def _res_to_official(inner: str) -> str:
    for d, o in _RES_INNER:
        if inner.startswith(d):
            return o + inner[len(d):]
    return inner


def _res_to_diffusers(inner: str) -> str:
    for d, o in _RES_INNER:
        if inner.startswith(o):
            return d + inner[len(o):]
    return inner


def _common_vae_to_official(k: str) -> str | None:
    """Keys shared by both VAE versions (convs in/out, mid block, quant convs); None if not one of them."""
    if k.startswith("quant_conv."):
        return "conv1." + k[len("quant_conv."):]
    if k.startswith("post_quant_conv."):
        return "conv2." + k[len("post_quant_conv."):]
    side, _, rest = k.partition(".")
    for d, o in (("conv_in.", "conv1."), ("norm_out.gamma", "head.0.gamma"), ("conv_out.", "head.2.")):
        if rest.startswith(d):
            return f"{side}.{o}{rest[len(d):]}"
    if m := re.match(r"mid_block\.resnets\.(\d)\.(.+)$", rest):
        return f"{side}.middle.{2 * int(m.group(1))}.{_res_to_official(m.group(2))}"
    if m := re.match(r"mid_block\.attentions\.0\.(.+)$", rest):
        return f"{side}.middle.1.{m.group(1)}"
    return None


def _common_vae_to_diffusers(k: str) -> str | None:
    if k.startswith("conv1."):
        return "quant_conv." + k[len("conv1."):]
    if k.startswith("conv2."):
        return "post_quant_conv." + k[len("conv2."):]
    side, _, rest = k.partition(".")
    for d, o in (("conv_in.", "conv1."), ("norm_out.gamma", "head.0.gamma"), ("conv_out.", "head.2.")):
        if rest.startswith(o):
            return f"{side}.{d}{rest[len(o):]}"
    if m := re.match(r"middle\.([02])\.(.+)$", rest):
        return f"{side}.mid_block.resnets.{int(m.group(1)) // 2}.{_res_to_diffusers(m.group(2))}"
    if m := re.match(r"middle\.1\.(.+)$", rest):
        return f"{side}.mid_block.attentions.0.{m.group(1)}"
    return None


def vae21_official_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    return convert_wan_vae_to_diffusers(sd)


def vae21_diffusers_to_official(sd: dict[str, torch.Tensor], num_res_blocks: int = 2) -> dict[str, torch.Tensor]:
    # official decoder: per level, num_res_blocks+1 residual blocks then one upsample, in one flat list
    per_level = num_res_blocks + 2
    out = {}
    for k, v in sd.items():
        n = _common_vae_to_official(k)
        if n is None and (m := re.match(r"encoder\.down_blocks\.(\d+)\.(.+)$", k)):
            n = f"encoder.downsamples.{m.group(1)}.{_res_to_official(m.group(2))}"
        elif n is None and (m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", k)):
            n = f"decoder.upsamples.{int(m.group(1)) * per_level + int(m.group(2))}.{_res_to_official(m.group(3))}"
        elif n is None and (m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", k)):
            n = f"decoder.upsamples.{int(m.group(1)) * per_level + per_level - 1}.{m.group(2)}"
        out[n or k] = v
    return out


def vae22_official_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan2.2 VAE: official `{enc}.downsamples.X.downsamples.Y` nest -> diffusers resnets / down(up)sampler.

    Same map as diffusers' scripts/convert_wan_to_diffusers.py `convert_vae_22`, written as rules.
    """
    out = {}
    for k, v in sd.items():
        n = _common_vae_to_diffusers(k)
        if n is None and (m := re.match(r"(encoder|decoder)\.(down|up)samples\.(\d+)\.(?:down|up)samples\.(\d+)\.(.+)$", k)):
            side, d, x, y, inner = m.groups()
            blocks = f"{side}.{d}_blocks.{x}"
            if inner.startswith(("residual.", "shortcut.")):
                n = f"{blocks}.resnets.{y}.{_res_to_diffusers(inner)}"
            else:                      # resample.* / time_conv.*: the one resampler of the level
                n = f"{blocks}.{d}sampler.{inner}"
        out[n or k] = v
    return out


def vae22_diffusers_to_official(sd: dict[str, torch.Tensor], num_res_blocks: int = 2) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        n = _common_vae_to_official(k)
        if n is None and (m := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", k)):
            side, d, x, y, inner = m.groups()
            n = f"{side}.{d}samples.{x}.{d}samples.{y}.{_res_to_official(inner)}"
        elif n is None and (m := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(?:down|up)sampler\.(.+)$", k)):
            side, d, x, inner = m.groups()
            idx = num_res_blocks if d == "down" else num_res_blocks + 1
            n = f"{side}.{d}samples.{x}.{d}samples.{idx}.{inner}"
        out[n or k] = v
    return out
