"""GGUF Wan DiT files: the city96 (ComfyUI-GGUF) / QuantStack layouts, read and run without a full copy.

What those files hold (city96/ComfyUI-GGUF tools/convert.py, tools/lcpp.patch, loader.py): the official
Wan tensor names (`blocks.0.self_attn.q.weight`, `head.modulation`, …; a `model.diffusion_model.`
prefix is accepted and stripped, as everywhere else), `general.architecture` = "wan", linear weights in a
GGML quant type (Q8_0, Q6_K, Q5_K, Q4_K, … a *_K_M file mixes several), 1-D tensors and the `.modulation`
tables in F32, the 5-D patch embedding in F32 or F16. GGUF stores shapes innermost first, so a tensor's
torch shape is its dims reversed, unless a `comfy.gguf.orig_shape.<name>` array gives it (ComfyUI's
converter flattens tensors whose last dim does not fit the quant block).

Parsing is the `gguf` package's (GGUFReader memory-maps the file); dequantization is diffusers'
(`diffusers.quantizers.gguf.utils`: GGUFParameter, the torch ports of City96's dequant functions).
Written here, and why:
- the state dict: diffusers' `load_gguf_checkpoint` copies every tensor (`tensor.data.copy()`), a
  second 9-15 GB per 14B expert in RAM; here each tensor is a view of the file's copy-on-write mapping,
  clean page cache until it is read;
- the linear: diffusers' GGUFLinear fixes its compute dtype when built and ignores orig_shape; ours
  dequantizes in the input's dtype (fp32 math on a CPU) and reshapes to (out, in);
- F32 / F16 / BF16 linear weights are kept as raw bytes with their type too, so wan_app.memory's
  dtype casts (which skip non-float tensors) never turn a mapped weight into an anonymous copy.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

MAGIC = b"GGUF"
PREFIX = "model.diffusion_model."
ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."
_PLAIN = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _gguf():
    import gguf
    return gguf


def supported_types() -> list[str]:
    """The GGML types a Wan DiT may use here: plain floats and every type diffusers dequantizes."""
    from diffusers.quantizers.gguf.utils import dequantize_functions
    names = list(_PLAIN) + [t.name for t in dequantize_functions]
    return list(dict.fromkeys(names))


def is_gguf(path) -> bool:
    """A GGUF file, told by its magic bytes (never by its name)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class GgufTensor:
    shape: tuple[int, ...]      # torch order, dequantized
    qtype: str                  # GGML type name: "Q8_0", "Q4_K", "F32", ...
    nbytes: int                 # bytes in the file


def _reader(path):
    gguf = _gguf()
    try:
        return gguf.GGUFReader(str(path), mode="c")    # copy-on-write: pages stay the file's until written
    except (ValueError, OSError, IndexError) as e:
        raise UserError("checkpoint", f"{Path(path).name} is not a readable GGUF file ({type(e).__name__}: {e})",
                        "download it again, or use a .safetensors file") from None


def _orig_shape(reader, name: str) -> tuple[int, ...] | None:
    field = reader.get_field(ORIG_SHAPE_KEY + name)
    if field is None:
        return None
    return tuple(int(field.parts[i][0]) for i in field.data)


def _entries(path):
    """(reader, [(official name, ReaderTensor, torch shape, type name)]), unsupported types refused."""
    reader = _reader(path)
    ok = set(supported_types())
    out = []
    for t in reader.tensors:
        qtype = t.tensor_type.name
        if qtype not in ok:
            raise UserError("checkpoint", f"{Path(path).name}: tensor {t.name} is stored as GGUF type {qtype}, "
                            "which cannot be read", "supported types: " + ", ".join(supported_types()))
        shape = _orig_shape(reader, t.name) or tuple(int(d) for d in reversed(t.shape.tolist()))
        out.append((t.name.removeprefix(PREFIX), t, shape, qtype))
    return reader, out


def read_gguf_header(path) -> dict[str, GgufTensor]:
    """{official name: (torch shape, GGML type, bytes in the file)}: for identification by shapes and for
    the planner's exact byte count. Reads the header only (the tensor data stays on disk)."""
    _, entries = _entries(path)
    return {name: GgufTensor(shape, qtype, int(t.n_bytes)) for name, t, shape, qtype in entries}


def header_shapes(path) -> dict[str, tuple[int, ...]]:
    """{official name: shape}, the form wan_app.checkpoints identifies a DiT from."""
    return {k: v.shape for k, v in read_gguf_header(path).items()}


@dataclass(frozen=True)
class GgufSizes:
    total: int                  # all tensor bytes in the file
    blocks: tuple[int, ...]     # bytes of blocks.0, blocks.1, … (what block swap moves)
    nonblock: int               # everything else (embeddings, head)
    qtypes: dict                # GGML type -> bytes of that type

    @property
    def main_type(self) -> str:
        """The type holding most bytes (what a "Q4_K_M" file is called by)."""
        return max(self.qtypes, key=self.qtypes.get)


def gguf_sizes(header: dict[str, GgufTensor]) -> GgufSizes:
    per_block: dict[int, int] = {}
    nonblock = 0
    qtypes: dict[str, int] = {}
    for name, t in header.items():
        qtypes[t.qtype] = qtypes.get(t.qtype, 0) + t.nbytes
        if name.startswith("blocks."):
            i = int(name.split(".")[1])
            per_block[i] = per_block.get(i, 0) + t.nbytes
        else:
            nonblock += t.nbytes
    blocks = tuple(per_block.get(i, 0) for i in range(max(per_block) + 1)) if per_block else ()
    return GgufSizes(sum(blocks) + nonblock, blocks, nonblock, qtypes)


# ---- tensors ----------------------------------------------------------------------------------------
def load_gguf_state_dict(path) -> dict[str, torch.Tensor]:
    """{official name: tensor}, every tensor a view of the file's mapping (nothing copied).

    Quantized tensors — and all 2-D weights, whatever their type — are GGUFParameter (raw bytes,
    `quant_type`, `.gguf_shape` the torch shape); other F32 / F16 / BF16 tensors are plain tensors of
    their shape."""
    from diffusers.quantizers.gguf.utils import GGUFParameter
    gguf = _gguf()
    _, entries = _entries(path)
    sd: dict[str, torch.Tensor] = {}
    for name, t, shape, qtype in entries:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            raw = torch.from_numpy(t.data)
        if qtype in _PLAIN and len(shape) != 2:
            sd[name] = raw.view(_PLAIN[qtype]).reshape(shape)
            continue
        rows = raw.view(torch.uint8)
        rows = rows.reshape(-1, rows.shape[-1]) if rows.ndim > 1 else rows.reshape(1, -1)
        p = GGUFParameter(rows, quant_type=gguf.GGMLQuantizationType[qtype])
        p.gguf_shape = tuple(shape)
        sd[name] = p
    return sd


def dequantize(t: torch.Tensor, dtype: torch.dtype = torch.float32, shape=None) -> torch.Tensor:
    """A GGUFParameter (or plain tensor) as a `dtype` tensor of its torch shape."""
    if not hasattr(t, "quant_type"):
        return t.to(dtype)
    from diffusers.quantizers.gguf.utils import GGML_QUANT_SIZES, dequantize_functions
    gguf = _gguf()
    qt = gguf.GGMLQuantizationType(int(t.quant_type))
    raw = t.as_tensor() if hasattr(t, "as_tensor") else t
    shape = tuple(shape or getattr(t, "gguf_shape", None) or t.quant_shape)
    if qt.name in _PLAIN:
        w = raw.contiguous().view(_PLAIN[qt.name])
    else:
        # K-quants' scales are fp16: their products in fp32 on a CPU (as ggml does), fp16 on a GPU
        work = torch.float32 if dtype == torch.float32 else torch.float16
        block, size = GGML_QUANT_SIZES[qt]
        w = dequantize_functions[qt](raw.reshape(-1, size), block, size, dtype=work)
    return w.reshape(shape).to(dtype)


class GgufLinear(nn.Linear):
    """A Linear whose weight stays as GGUF bytes and is dequantized at each call, in the input's dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        with torch.device("meta"):
            super().__init__(in_features, out_features, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize(self.weight, x.dtype, (self.out_features, self.in_features))
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)

    def extra_repr(self) -> str:
        qt = getattr(self.weight, "quant_type", None)
        name = _gguf().GGMLQuantizationType(int(qt)).name if qt is not None else "?"
        return f"in_features={self.in_features}, out_features={self.out_features}, storage=gguf {name}"


# ---- the model --------------------------------------------------------------------------------------
def transformer_config(shapes: dict[str, tuple[int, ...]], head_dim: int = 128) -> dict:
    """WanTransformer3DModel's config from the official-name shapes (docs/WAN_FACTS.md "Identify")."""
    dim = shapes["head.modulation"][-1]
    layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
    pe = shapes["patch_embedding.weight"]
    return dict(patch_size=list(pe[2:]), num_attention_heads=dim // head_dim, attention_head_dim=head_dim,
                in_channels=pe[1], out_channels=shapes["head.head.weight"][0] // (pe[2] * pe[3] * pe[4]),
                text_dim=shapes["text_embedding.0.weight"][1], freq_dim=shapes["time_embedding.0.weight"][1],
                ffn_dim=shapes["blocks.0.ffn.0.weight"][0], num_layers=layers,
                cross_attn_norm="blocks.0.norm3.weight" in shapes, qk_norm="rms_norm_across_heads", eps=1e-6,
                image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024)


def build_gguf_transformer(path, head_dim: int = 128, dtype: torch.dtype = torch.float32):
    """A WanTransformer3DModel whose linears are GgufLinear over the file's mapping; every other tensor in
    the dtype wan_app.memory gives a model stored in `dtype` (its `_keep_in_fp32_modules` in fp32).
    `dtype` is the compute dtype; the linears follow their input's dtype at each call."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from . import convert
    from .load import param_dtype
    raw = load_gguf_state_dict(path)
    shapes = {k: tuple(getattr(v, "gguf_shape", None) or v.shape) for k, v in raw.items()}
    cfg = transformer_config(shapes, head_dim)
    sd = convert.dit_official_to_diffusers(raw)
    keep = list(WanTransformer3DModel._keep_in_fp32_modules or [])
    with init_empty_weights():
        model = WanTransformer3DModel.from_config(cfg)
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            key = f"{parent_name}.{name}" if parent_name else name
            # `_keep_in_fp32_modules` linears (the time embedder) are dequantized to fp32 once: diffusers
            # casts the timestep to the dtype of the time embedder's first parameter, which must be a float
            if any(k in key for k in keep):
                continue
            if type(child) is nn.Linear and hasattr(sd.get(key + ".weight"), "quant_type"):
                setattr(parent, name, GgufLinear(child.in_features, child.out_features, child.bias is not None))
    linears = {n for n, m in model.named_modules() if isinstance(m, GgufLinear)}
    expected = set(model.state_dict().keys())
    missing, unexpected = expected - set(sd), set(sd) - expected
    if missing or unexpected:
        raise UserError("checkpoint", f"{Path(path).name} does not fit a Wan DiT: missing "
                        f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}",
                        "use a Wan2.1 / Wan2.2 DiT GGUF (city96 or QuantStack)")
    for key, value in sd.items():
        owner, _, leaf = key.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        if owner in linears and leaf == "weight":
            module._parameters["weight"] = value          # stays GGUF bytes
            continue
        want = param_dtype(key, dtype, keep)
        value = dequantize(value, want) if hasattr(value, "quant_type") else value
        value = value if value.dtype == want else value.to(want)
        if leaf in module._parameters:
            module._parameters[leaf] = nn.Parameter(value, requires_grad=False)
        else:
            module._buffers[leaf] = value
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise UserError("checkpoint", f"{Path(path).name} left {left[:5]} unset", "use a complete Wan DiT GGUF")
    return model.eval().requires_grad_(False)


def gguf_linears(model: nn.Module) -> int:
    return sum(isinstance(m, GgufLinear) for m in model.modules())
