"""Checkpoints with real names, shapes and dtypes but no data: a safetensors header followed by a hole.

Real-size shapes (dim 5120, 40 layers) without writing gigabytes: the file is truncated up to the size its
header promises, so the filesystem stores it sparse and the scan sees a complete, valid-looking file."""
from __future__ import annotations

import json
import struct
from pathlib import Path

ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "U8": 1}


def write_header_only(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> Path:
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = ITEMSIZE[dtype]
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path


def wan_dit_tensors(dim: int, ffn: int, layers: int, in_ch: int, out_ch: int = 16, text_dim: int = 4096,
                    img_emb: bool = False, dtype: str = "F8_E4M3") -> dict:
    """The tensors identification reads (official names), for a Wan DiT of this shape."""
    t = {"head.modulation": ("F32", (1, 2, dim)),
         "patch_embedding.weight": ("F16", (dim, in_ch, 1, 2, 2)),
         "head.head.weight": ("F16", (out_ch * 4, dim)),
         "text_embedding.0.weight": ("F16", (dim, text_dim)),
         "time_embedding.0.weight": ("F16", (dim, 256))}
    for i in (0, layers - 1):
        t[f"blocks.{i}.ffn.0.weight"] = (dtype, (ffn, dim))
    if img_emb:
        t["img_emb.proj.1.weight"] = ("F16", (dim, 1280))
    return t
