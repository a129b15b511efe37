"""LoRAs for the Wan DiT: find them, read any common key layout, apply them at forward time on every
weight path (16-bit, fp8, block swap, one A14B expert at a time). See docs/LORA.md."""
from .apply import STRENGTH_RANGE, LoraHandle, LoraLinear, attach, check_strength
from .find import LoraFile, LoraItem, find_loras, group_items, identify, lora_id
from .weights import LoraWeights, LowRank, load_lora, target_shapes

__all__ = ["STRENGTH_RANGE", "LoraFile", "LoraHandle", "LoraItem", "LoraLinear", "LoraWeights", "LowRank",
           "attach", "check_strength", "find_loras", "group_items", "identify", "load_lora", "lora_id",
           "target_shapes"]
