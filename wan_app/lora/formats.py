"""LoRA key layouts -> the diffusers parameter names of WanTransformer3DModel.

Layouts read (docs/LORA.md has the sources):
- ComfyUI / musubi-tuner / LightX2V / ai-toolkit: `diffusion_model.<official module>.lora_down.weight` /
  `.lora_up.weight` (or `.lora_A.weight` / `.lora_B.weight`), `<module>.alpha`, and full deltas
  `<module>.diff` (weight), `<module>.diff_b` (bias), `blocks.N.diff_m` (the block's modulation table);
  the official names may also come bare or with `model.diffusion_model.`;
- kohya (musubi-tuner's default): `lora_unet_<official module with dots as underscores>.lora_down.weight`
  (Wan "Fun" LoRAs: `lora_unet__…`);
- diffusers / PEFT: `transformer.<diffusers module>.lora_A.weight` / `.lora_B.weight`, bias deltas as
  `.lora_B.bias`, alpha in the `lora_adapter_metadata` JSON of the safetensors header (diffusers'
  `save_lora_weights`), else scale 1.

Written here instead of calling diffusers' `_convert_non_diffusers_wan_lora_to_diffusers` /
`_convert_musubi_wan_lora_to_diffusers` because those drop the norm `.diff` keys ("just zeroed values"),
the block `diff_m` modulation deltas and any other `.diff` with a log line, raise on any key they do not
expect instead of naming it, and the musubi one needs every module of every block. The names come from
the project's official<->diffusers map (checkpoints.convert), which tests keep equal to diffusers' own
checkpoint converter; tests/test_lora.py checks the results against diffusers' `load_lora_weights`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

from ..checkpoints import convert

# (suffix, kind), longest first so ".lora_B.bias" wins over ".bias"-less matches
_SUFFIXES = (
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_B.bias", "diff_b"),
    (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff_m", "diff_m"), (".diff", "diff"),
)
# (prefix, naming) — "official" names as in the Wan repo, "diffusers" as in WanTransformer3DModel
_PREFIXES = (
    ("model.diffusion_model.", "official"), ("diffusion_model.", "official"),
    ("lora_unet__", "kohya"), ("lora_unet_", "kohya"),
    ("base_model.model.", "diffusers"), ("transformer.", "diffusers"),
)
FORMATS = {"official": "comfyui", "kohya": "kohya", "diffusers": "diffusers"}
_OFFICIAL_ROOTS = ("blocks.", "head.", "time_embedding.", "time_projection.", "text_embedding.", "patch_embedding.",
                   "img_emb.")


@dataclass(frozen=True)
class Key:
    raw: str
    naming: str          # official | kohya | diffusers
    module: str          # in that naming (kohya: with underscores)
    kind: str            # down | up | alpha | diff | diff_b | diff_m


def split_key(raw: str) -> Key | None:
    """The naming, module and kind of one LoRA key; None when it is no LoRA key at all."""
    kind = None
    for suffix, k in _SUFFIXES:
        if raw.endswith(suffix):
            kind, body = k, raw[: -len(suffix)]
            break
    if kind is None:
        return None
    for prefix, naming in _PREFIXES:
        if body.startswith(prefix):
            return Key(raw, naming, body[len(prefix):], kind)
    naming = "official" if body.startswith(_OFFICIAL_ROOTS) or kind == "diff_m" else "diffusers"
    return Key(raw, naming, body, kind)


def file_format(keys: list[Key]) -> str:
    """comfyui | kohya | diffusers | mixed | unknown — for listing, from the most common naming."""
    namings = {k.naming for k in keys}
    if not namings:
        return "unknown"
    return FORMATS[namings.pop()] if len(namings) == 1 else "mixed"


class NameMap:
    """Official / kohya / diffusers module names -> the diffusers parameters they address, for one model."""

    def __init__(self, diffusers_params: tuple[str, ...]):
        self.params = set(diffusers_params)
        official = convert.dit_diffusers_to_official({p: None for p in diffusers_params})
        self._o2d = dict(zip(official, diffusers_params))          # official param -> diffusers param
        self._kohya: dict[str, str] = {}                            # underscored official module -> official
        for o in official:
            module = o.rsplit(".", 1)[0] if "." in o else o
            self._kohya[module.replace(".", "_")] = module
            self._kohya[o.replace(".", "_")] = o                    # a parameter addressed as a module

    def param(self, key: Key, kind: str | None = None) -> str | None:
        """The diffusers parameter `key` changes: `<module>.weight` for down/up/alpha/diff, `.bias` for
        diff_b, the modulation table for diff_m. None when the model has no such parameter."""
        kind = kind or key.kind
        leaf = {"diff_b": "bias", "diff_m": "modulation"}.get(kind, "weight")
        if key.naming == "diffusers":
            if kind == "diff_m":
                leaf = "scale_shift_table"
            for cand in (f"{key.module}.{leaf}", key.module):
                if cand in self.params:
                    return cand
            return None
        module = key.module
        if key.naming == "kohya":
            module = self._kohya.get(module)
            if module is None:
                return None
        for cand in (f"{module}.{leaf}", module):
            if cand in self._o2d:
                return self._o2d[cand]
        return None


@lru_cache(maxsize=8)
def name_map(diffusers_params: tuple[str, ...]) -> NameMap:
    return NameMap(diffusers_params)


def peft_alphas(metadata: dict[str, str] | None) -> tuple[float | None, dict[str, float]]:
    """(lora_alpha, alpha_pattern) from diffusers' `lora_adapter_metadata`, with or without the
    `transformer.` prefix its save_lora_weights packs in; (None, {}) when the file has none."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return None, {}
    try:
        meta = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return None, {}
    meta = {re.sub(r"^transformer\.", "", k): v for k, v in meta.items()}
    alpha = meta.get("lora_alpha")
    pattern = {re.sub(r"^transformer\.", "", k): float(v) for k, v in (meta.get("alpha_pattern") or {}).items()}
    return (float(alpha) if alpha is not None else None), pattern
