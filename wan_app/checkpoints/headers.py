"""Read what a weight file holds (names, dtypes, shapes) without reading the weights.

safetensors: the JSON header alone (a few KB even for a 28 GB file), checked against the file size so a
truncated download is caught before anything is loaded. `.pth`: `torch.load(weights_only=True, mmap=True)`,
which maps the zip's storages lazily and never runs pickled code.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

# safetensors dtype names -> our short names
ST_DTYPES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8", "F8_E5M2": "fp8",
             "F64": "fp64", "I64": "i64", "I32": "i32", "U8": "u8", "BOOL": "bool", "I8": "i8", "I16": "i16"}
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F64": 8, "I64": 8, "I32": 4,
             "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str                 # safetensors name: "F16", "F8_E4M3", ...
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = _ITEMSIZE.get(self.dtype, 1)
        for s in self.shape:
            n *= s
        return n


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensor infos and the `__metadata__` of a .safetensors file; UserError if it is cut short or not one."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _broken(path, "it is empty or shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            raise _broken(path, f"its header claims {n:,} bytes but the file has {size:,}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _broken(path, "its header is not valid safetensors JSON") from None
    meta = header.pop("__metadata__", None) or {}
    infos: dict[str, TensorInfo] = {}
    end = 0
    for name, entry in header.items():
        infos[name] = TensorInfo(entry["dtype"], tuple(entry["shape"]))
        end = max(end, entry["data_offsets"][1])
    if 8 + n + end > size:
        err = _broken(path, f"the file is truncated: its header needs {8 + n + end:,} bytes, "
                            f"the file has {size:,} (an interrupted download?)")
        err.infos = infos          # still identifiable, so the message can say what the file was meant to be
        raise err
    return infos, meta


_TORCH_TO_ST = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3",
                "float8_e5m2": "F8_E5M2", "float64": "F64", "int64": "I64", "int32": "I32", "uint8": "U8",
                "int8": "I8", "int16": "I16", "bool": "BOOL"}


def torch_dtype_name(dtype) -> str:
    return _TORCH_TO_ST.get(str(dtype).replace("torch.", ""), str(dtype))


def load_pth(path: Path) -> dict:
    """A .pth state dict, memory-mapped; only tensors and plain containers are accepted (weights_only)."""
    import torch
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a truncated zip, a pickle with code, a non-zip legacy file
        raise _broken(Path(path), f"torch.load(weights_only=True) refused it ({type(e).__name__}: {e})") from None
    # some checkpoints wrap the state dict (e.g. {"state_dict": {...}}); unwrap one level
    if isinstance(sd, dict) and len(sd) == 1:
        (only,) = sd.values()
        if isinstance(only, dict):
            sd = only
    if not isinstance(sd, dict):
        raise _broken(Path(path), "it does not hold a state dict")
    return {k: v for k, v in sd.items() if hasattr(v, "shape")}


def read_pth_header(path: Path) -> dict[str, TensorInfo]:
    sd = load_pth(path)
    return {k: TensorInfo(torch_dtype_name(v.dtype), tuple(v.shape)) for k, v in sd.items()}


def read_header(path: Path) -> dict[str, TensorInfo]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors_header(path)[0]
    return read_pth_header(path)


def _broken(path: Path, why: str) -> UserError:
    return UserError("checkpoint", f"{path} cannot be read: {why}",
                     "download the file again (compare its size with the one on the model page) or remove it")
