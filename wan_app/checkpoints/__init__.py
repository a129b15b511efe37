"""Find, identify, convert and load Wan weights (see docs/ARCHITECTURE.md, "Identification")."""
from .discover import FoundFile, Inventory, InventoryCache, ModelFiles, ModelStatus, identify_file, scan, scan_cached
from .download import download_missing
from .load import Components, load_components, load_tokenizer, load_transformer, build_text_encoder, build_vae

__all__ = ["scan", "scan_cached", "InventoryCache", "Inventory", "FoundFile", "ModelStatus", "ModelFiles", "identify_file", "Components",
           "load_components", "load_transformer", "load_tokenizer", "build_text_encoder", "build_vae",
           "download_missing"]
