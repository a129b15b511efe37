"""LoRAs for the Wan DiT: find them, read any common key layout, apply them at forward time on every
weight path (16-bit, fp8, block swap, one A14B expert at a time), and the few-step presets.
See docs/LORA.md for the layouts, the preset values and their sources."""
from .apply import STRENGTH_RANGE, LoraHandle, LoraLinear, attach, check_strength
from .find import LoraFile, LoraItem, find_loras, group_items, identify, lora_id
from .presets import PRESETS, Preset, PresetFile, presets_for
from .select import LoraChoice, LoraUse, choices_from_metadata, parse_lora_arg, per_expert, resolve
from .weights import LoraWeights, LowRank, load_lora, target_shapes

__all__ = ["STRENGTH_RANGE", "LoraChoice", "LoraFile", "LoraHandle", "LoraItem", "LoraLinear", "LoraUse",
           "LoraWeights", "LowRank", "PRESETS", "Preset", "PresetFile", "attach", "check_strength",
           "choices_from_metadata", "find_loras", "group_items", "identify", "load_lora", "lora_id",
           "parse_lora_arg", "per_expert", "presets_for", "resolve", "target_shapes"]
