"""Read what a weight file holds (names, dtypes, shapes) without reading the weights.

safetensors: the JSON header alone (a few KB even for a 28 GB file), checked against the file size so a
truncated download is caught before anything is loaded. `.pth`: `torch.load(weights_only=True, mmap=True)`,
which maps the zip's storages lazily and never runs pickled code.

A models folder is shared with other tools and sometimes hostile, so every read here is defensive: only
regular files are opened (a FIFO named `x.safetensors` would block `open()` forever), the header has a size
limit, and a header that is not what safetensors writes is one UserError naming the file, never a
KeyError from deep inside the scan.
"""
from __future__ import annotations

import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

# safetensors dtype names -> our short names
ST_DTYPES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8", "F8_E5M2": "fp8",
             "F64": "fp64", "I64": "i64", "I32": "i32", "U8": "u8", "BOOL": "bool", "I8": "i8", "I16": "i16"}
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F64": 8, "I64": 8, "I32": 4,
             "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}

# The largest header this app reads. Wan's biggest file (a 14B DiT, ~1100 tensors) has a ~150 KB header and
# LoRA files with training metadata a few MB; safetensors itself stops at 100 MB (MAX_HEADER_SIZE in the
# safetensors crate), which would cost seconds and GBs of JSON per hostile file on every scan.
MAX_HEADER_BYTES = 16 * 1024 * 1024


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


def file_kind(mode: int) -> str:
    """What a non-regular directory entry is, in words for a problem line."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path):
    """Open `path` for reading only if it is a regular file; UserError naming what it is otherwise.

    The entry is stat'ed before it is opened, and opened with O_NONBLOCK so that an entry swapped for a
    FIFO after that stat still cannot block open(); fstat on the descriptor then has the last word."""
    path = Path(path)
    try:
        st = os.stat(path)      # before open: opening a device or FIFO can block or have side effects
    except OSError as e:
        raise unreadable(path, e) from None
    if not stat.S_ISREG(st.st_mode):
        raise _broken(path, f"it is {file_kind(st.st_mode)}, not a weight file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise unreadable(path, e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _broken(path, f"it is {file_kind(st.st_mode)}, not a weight file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def unreadable(path: Path, e: OSError) -> UserError:
    """A stat/open failure said as what it means for the user."""
    import errno
    if e.errno == errno.ENOENT and os.path.islink(path):
        why = f"it is a symlink to {os.readlink(path)}, which does not exist"
    elif e.errno == errno.ELOOP:
        why = "it is a symlink loop"
    elif e.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied"
    else:
        why = e.strerror or e.__class__.__name__
    return UserError("checkpoint", f"{path} cannot be read: {why}",
                     "fix the file or its permissions, or remove it from the models folder")


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensor infos and the `__metadata__` of a .safetensors file; UserError if it is cut short or not one."""
    path = Path(path)
    f, size = open_regular(path)
    with f:
        head = f.read(8)
        if len(head) < 8:
            raise _broken(path, "it is empty or shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise _broken(path, f"its header claims {n:,} bytes but the file has {size:,}")
        if n > MAX_HEADER_BYTES:
            raise _broken(path, f"its header is {n:,} bytes, more than the {MAX_HEADER_BYTES:,} this app reads "
                                "(Wan checkpoints have headers under 1 MB)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _broken(path, "its header is not valid safetensors JSON") from None
    if not isinstance(header, dict):
        raise _broken(path, "its header is not a JSON object of tensors")
    meta = header.pop("__metadata__", None)
    meta = meta if isinstance(meta, dict) else {}
    infos: dict[str, TensorInfo] = {}
    end = 0
    for name, entry in header.items():
        info, offsets = _entry(path, name, entry)
        infos[name] = info
        end = max(end, offsets[1])
    if 8 + n + end > size:
        err = _broken(path, f"the file is truncated: its header needs {8 + n + end:,} bytes, "
                            f"the file has {size:,} (an interrupted download?)")
        err.infos = infos          # still identifiable, so the message can say what the file was meant to be
        raise err
    return infos, meta


def _entry(path: Path, name: str, entry) -> tuple[TensorInfo, tuple[int, int]]:
    """One header entry, checked the way safetensors checks it when loading (dtype, shape, offsets)."""
    def bad(why: str) -> UserError:
        return _broken(path, f"header entry {name[:80]!r} {why}")
    if not isinstance(entry, dict):
        raise bad("is not a tensor description")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise bad("has no dtype")
    if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
        raise bad("has no valid shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise bad("has no valid data_offsets")
    info = TensorInfo(dtype, tuple(shape))
    if dtype in _ITEMSIZE and offsets[1] - offsets[0] != info.nbytes:
        raise bad(f"says {offsets[1] - offsets[0]:,} bytes for a {dtype} tensor of shape {tuple(shape)} "
                  f"({info.nbytes:,} bytes)")
    return info, (offsets[0], offsets[1])


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


_TORCH_TO_ST = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3",
                "float8_e5m2": "F8_E5M2", "float64": "F64", "int64": "I64", "int32": "I32", "uint8": "U8",
                "int8": "I8", "int16": "I16", "bool": "BOOL"}


def torch_dtype_name(dtype) -> str:
    return _TORCH_TO_ST.get(str(dtype).replace("torch.", ""), str(dtype))


def load_pth(path: Path) -> dict:
    """A .pth state dict, memory-mapped; only tensors and plain containers are accepted (weights_only)."""
    import torch
    path = Path(path)
    open_regular(path)[0].close()       # never hand torch a FIFO, a device or a dangling link
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a truncated zip, a pickle with code, a non-zip legacy file
        raise _broken(path, f"torch.load(weights_only=True) refused it ({type(e).__name__}: {str(e)[:300]})") from None
    # some checkpoints wrap the state dict (e.g. {"state_dict": {...}}); unwrap one level
    if isinstance(sd, dict) and len(sd) == 1:
        (only,) = sd.values()
        if isinstance(only, dict):
            sd = only
    if not isinstance(sd, dict):
        raise _broken(path, "it does not hold a state dict")
    return {k: v for k, v in sd.items() if isinstance(k, str) and hasattr(v, "shape") and hasattr(v, "dtype")}


def read_pth_header(path: Path) -> dict[str, TensorInfo]:
    sd = load_pth(path)
    return {k: TensorInfo(torch_dtype_name(v.dtype), tuple(v.shape)) for k, v in sd.items()}


@dataclass(frozen=True)
class GgufInfo(TensorInfo):
    """A GGUF tensor: its dequantized shape, and the exact bytes its quantized blocks take in the file."""
    size: int = 0

    @property
    def nbytes(self) -> int:
        return self.size


def read_header(path: Path) -> dict[str, TensorInfo]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors_header(path)[0]
    if path.suffix.lower() == ".gguf":
        from .gguf import read_gguf_header
        return {k: GgufInfo("GGUF", tuple(t.shape), t.nbytes) for k, t in read_gguf_header(path).items()}
    return read_pth_header(path)


def _broken(path: Path, why: str) -> UserError:
    return UserError("checkpoint", f"{path} cannot be read: {why}",
                     "download the file again (compare its size with the one on the model page) or remove it")
