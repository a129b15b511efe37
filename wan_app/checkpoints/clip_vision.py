"""The CLIP ViT-H/14 image encoder of Wan2.1 I2V / FLF2V, as a transformers `CLIPVisionModel`.

Two files hold it: ComfyUI's `clip_vision/clip_vision_h.safetensors` (HF names, fp16) and the official
`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` (wan/modules/clip.py names: the whole XLM-RoBERTa
CLIP, its vision tower under `visual.`); a diffusers folder has it as `image_encoder/`. Both are built into
the same transformers module, memory-mapped (tensors already in the wanted dtype are never copied), no
remote code. The official names are mapped by hand because neither transformers nor diffusers reads that
.pth (diffusers' convert script takes laion's HF ViT-H instead: the XLM-RoBERTa CLIP kept that vision tower
frozen, so both are the same weights).

What the official code does with it (wan/modules/clip.py `CLIPModel.visual`, `use_31_block=True`) is
hidden_states[-2] of this model: see wan_app.i2v.clip_features.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import UserError
from .identify import CLIP_HEAD_DIM, HF_VISION_PREFIX

# Official (wan/modules/clip.py VisionTransformer / AttentionBlock) -> transformers CLIPVisionModel, per block
_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
          "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2"}
_BLOCK_INV = {v: k for k, v in _BLOCK.items()}
_OFFICIAL_BLOCK = re.compile(r"^visual\.transformer\.(\d+)\.(.+)\.(weight|bias)$")
_HF_BLOCK = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
# In the files but not in CLIPVisionModel: the projection head (ComfyUI keeps CLIPVisionModelWithProjection's
# visual_projection; the official tower has `visual.head`) and transformers 4's position_ids buffer.
_UNUSED = ("visual_projection.", "embeddings.position_ids")


def official_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official vision tower's tensors under transformers 5 CLIPVisionModel names (views, no copies);
    the text tower, the logit scale and the projection head are left out."""
    out = {}
    for k, v in sd.items():
        if m := _OFFICIAL_BLOCK.match(k):
            n, inner, kind = m.groups()
            base = f"encoder.layers.{n}."
            if inner == "attn.to_qkv":       # one fused projection, q then k then v (view(b, s, 3, n, d))
                for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}.{kind}"] = part
            elif inner in _BLOCK:
                out[f"{base}{_BLOCK[inner]}.{kind}"] = v
        elif k == "visual.patch_embedding.weight":
            out["embeddings.patch_embedding.weight"] = v
        elif k == "visual.cls_embedding":
            out["embeddings.class_embedding"] = v.reshape(v.shape[-1])
        elif k == "visual.pos_embedding":
            out["embeddings.position_embedding.weight"] = v.reshape(v.shape[-2:])
        elif k.startswith("visual.pre_norm."):
            out["pre_layrnorm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("visual.post_norm."):
            out["post_layernorm." + k.rsplit(".", 1)[1]] = v
    return out


def hf_to_official(sd: dict[str, torch.Tensor], head: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The inverse (for the tiny-model writer): a CLIPVisionModel state dict under the official names."""
    sd = {k.removeprefix(HF_VISION_PREFIX): v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if m := _HF_BLOCK.match(k):
            n, inner, kind = m.groups()
            if inner.startswith("self_attn.") and inner.endswith(("q_proj", "k_proj", "v_proj")):
                qkv.setdefault((n, kind), {})[inner.rsplit(".", 1)[1][0]] = v
            elif inner in _BLOCK_INV:
                out[f"visual.transformer.{n}.{_BLOCK_INV[inner]}.{kind}"] = v
        elif k == "embeddings.patch_embedding.weight":
            out["visual.patch_embedding.weight"] = v
        elif k == "embeddings.class_embedding":
            out["visual.cls_embedding"] = v.reshape(1, 1, -1)
        elif k == "embeddings.position_embedding.weight":
            out["visual.pos_embedding"] = v[None]
        elif k.startswith("pre_layrnorm."):
            out["visual.pre_norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("post_layernorm."):
            out["visual.post_norm." + k.rsplit(".", 1)[1]] = v
    for (n, kind), parts in qkv.items():
        out[f"visual.transformer.{n}.attn.to_qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if head is not None:
        out["visual.head"] = head
    return out


def hf_tensors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF-named file tensors as CLIPVisionModel (transformers 5) names them: no `vision_model.` prefix,
    without the parts that model does not have."""
    out = {k.removeprefix(HF_VISION_PREFIX): v for k, v in sd.items()}
    return {k: v for k, v in out.items() if not k.startswith(_UNUSED)}


def vision_config(ident, folder: Path | None = None):
    """CLIPVisionConfig from the shapes. The head count is not in the tensors: a diffusers image_encoder/
    has it in its config.json; single files are the ViT-H/14 family (head width 80)."""
    from transformers import CLIPVisionConfig
    from .load import _read_json
    e = ident.extra
    known = _read_json(folder / "config.json") if folder is not None else None
    if not isinstance(known, dict) or known.get("model_type") not in ("clip_vision_model", "clip"):
        known = None                 # e.g. the official folder's config.json, which is the DiT's
    heads = (known or {}).get("num_attention_heads") or max(1, e["width"] // CLIP_HEAD_DIM)
    # hidden_act "gelu" (exact) and eps 1e-5: ComfyUI's clip_vision_config_h.json and the official
    # VisionTransformer(activation='gelu', norm_eps=1e-5)
    return CLIPVisionConfig(hidden_size=e["width"], intermediate_size=e["ffn"], num_hidden_layers=e["layers"],
                            num_attention_heads=heads, image_size=e["image_size"], patch_size=e["patch"],
                            hidden_act=(known or {}).get("hidden_act", "gelu"),
                            layer_norm_eps=(known or {}).get("layer_norm_eps", 1e-5))


def build_clip_vision(found, dtype: torch.dtype = torch.float32):
    """A CLIPVisionModel from a found CLIP vision file (either layout), built on the meta device and filled
    from the file's mmap; only tensors that need another dtype get new memory."""
    from transformers import CLIPVisionModel
    from . import convert
    from .load import _assign, _release_converted, open_tensors
    if found.kind != "clip_vision":
        raise UserError("clip", f"{found.path} is not a CLIP vision encoder",
                        "put clip_vision_h.safetensors into the models folder's clip_vision/")
    raw = open_tensors(found.paths)
    file_tensors = list(raw.values())
    sd = official_to_hf(raw) if found.ident.naming == "official" else hf_tensors(raw)
    del raw
    sd = convert.dequantize(sd, dtype)
    folder = Path(found.paths[0]).parent if (Path(found.paths[0]).parent / "config.json").is_file() else None
    model = _assign(CLIPVisionModel, vision_config(found.ident, folder), sd, str(found.path), from_config=False)
    _release_converted(file_tensors, model)
    return model
