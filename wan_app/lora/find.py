"""Find LoRAs in the `loras/` folder of every models folder (ComfyUI's `models/loras` as it is) and say,
from their tensor shapes, which base they fit. Only headers are read.

The shapes tell the width (dim) and FFN width, so Wan2.1 1.3B, the 14B family and TI2V 5B are told
apart; what they cannot tell is whether a 14B LoRA was trained on Wan2.1 14B or on one of Wan2.2 A14B's
two experts (same shapes). That comes from the file name (`high_noise` / `low_noise`, `_HIGH_` /
`_LOW_`) or the folder (`high_noise_model/`), as for the base checkpoints (checkpoints.discover).
"""
from __future__ import annotations

import hashlib
import math
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .. import catalog
from ..errors import UserError
from .formats import file_format, split_key
from .weights import read_header

_Q = re.compile(r"(^|[._])(self_attn[._]q|attn1\.to_q)$")
_FFN_IN = re.compile(r"(^|[._])(ffn[._]0|ffn\.net\.0\.proj)$")
_BLOCK = re.compile(r"(?:^|[._])blocks[._](\d+)(?:[._]|$)")
# `high_noise` / `low-noise` in any case, or an upper-case `HIGH` / `LOW` word (Kijai's Lightning files:
# `…-4steps-lora_HIGH_fp16`); a lower-case "low" alone is a style word ("low-poly"), not an expert.
_EXPERT = re.compile(r"(?i:(?<![a-z0-9])(high|low)[_\-. ]?noise)|(?<![A-Za-z0-9])(HIGH|LOW)(?![A-Za-z0-9])")


@dataclass(frozen=True)
class LoraFile:
    path: Path
    format: str = "unknown"          # comfyui | kohya | diffusers | mixed | unknown
    dim: int | None = None
    ffn_dim: int | None = None
    blocks: int | None = None         # highest block index it touches + 1
    in_channels: int | None = None    # only when it carries a patch_embedding delta
    rank: int | None = None           # most common rank
    expert: str | None = None         # "high" | "low": A14B expert, from the file or folder name
    i2v: bool = False                 # has image cross-attention layers (k_img / v_img)
    n_tensors: int = 0
    bytes: int = 0
    problem: str | None = None
    block_numel: int = 0              # elements attach() keeps in the busiest block (factors, linear deltas)
    total_numel: int = 0              # … in the whole model

    def block_bytes(self, itemsize: int = 2) -> int:
        """What one block's swap slot must add for this LoRA at `itemsize` bytes per element (the
        compute dtype's: 2 for bf16). Several LoRAs add up."""
        return self.block_numel * itemsize

    def attached_bytes(self, itemsize: int = 2) -> int:
        """RAM (and VRAM for resident blocks) the attached LoRA holds, at `itemsize` bytes per element."""
        return self.total_numel * itemsize

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def fits(self) -> tuple[str, ...]:
        """Catalog model ids whose DiT has this LoRA's shapes."""
        if self.problem or self.dim is None:
            return ()
        return tuple(s.id for s in catalog.MODELS.values()
                     if s.arch.dim == self.dim and self.ffn_dim in (None, s.arch.ffn_dim)
                     and (self.blocks or 0) <= s.arch.num_layers
                     and self.in_channels in (None, s.arch.in_channels))

    @property
    def base(self) -> str:
        """What it is for, in words: 'Wan2.1 1.3B', 'Wan2.2 A14B high-noise expert', …"""
        if self.problem:
            return "unreadable"
        label = describe_dims((self.dim or 0, self.dim or 0), "blocks.0.attn1.to_q.weight", self.ffn_dim)
        if self.expert and self.dim == catalog.MODELS["wan2.2-t2v-a14b"].arch.dim:
            label = f"Wan2.2 A14B {self.expert}-noise expert"
        return label + (" (image-to-video)" if self.i2v else "")

    def check_fits(self, spec: catalog.ModelSpec) -> None:
        """UserError naming both shapes when this LoRA cannot apply to `spec`."""
        if self.problem:
            raise UserError("lora", self.problem, "download the LoRA again or remove it from the loras folder")
        if spec.id in self.fits:
            return
        if self.dim is None:
            raise UserError("lora", f"{self.name}: 0 of {self.n_tensors} tensors match {spec.name}",
                            "it has no Wan attention or FFN layer this app can apply")
        a = spec.arch
        if self.dim != a.dim or self.ffn_dim not in (None, a.ffn_dim):
            got = f"dim {self.dim}" + (f", FFN {self.ffn_dim}" if self.ffn_dim else "")
            raise UserError("lora", f"{self.name} was made for {self.base} ({got}); {spec.name} has dim {a.dim}, "
                                    f"FFN {a.ffn_dim}", "choose a LoRA made for this model")
        if self.in_channels not in (None, a.in_channels):
            raise UserError("lora", f"{self.name} was made for a model with {self.in_channels} input channels; "
                                    f"{spec.name} has {a.in_channels}", "choose a LoRA made for this model")
        raise UserError("lora", f"{self.name} touches {self.blocks} blocks; {spec.name} has {a.num_layers}",
                        "choose a LoRA made for this model")

    def describe(self) -> dict:
        d = {"path": str(self.path), "format": self.format, "base": self.base, "fits": list(self.fits),
             "rank": self.rank, "tensors": self.n_tensors, "bytes": self.bytes}
        if self.expert:
            d["expert"] = self.expert
        if self.problem:
            d["problem"] = self.problem
        return d


def describe_dims(shape: tuple[int, ...], param: str, ffn_dim: int | None = None) -> str:
    """The base a tensor shape of `param` belongs to, in words, from the catalog's shapes."""
    dim = shape[-1] if ".blocks." in f".{param}" or param.startswith("blocks.") else None
    names = []
    for s in catalog.MODELS.values():
        if s.tiny or dim != s.arch.dim or ffn_dim not in (None, s.arch.ffn_dim):
            continue
        names.append({"wan2.1-t2v-1.3b": "Wan2.1 1.3B", "wan2.2-ti2v-5b": "Wan2.2 TI2V 5B"}.get(s.id, "14B"))
    if names:
        return "Wan2.1 14B / Wan2.2 A14B" if names[0] == "14B" else names[0]
    tiny = catalog.MODELS["tiny-wan2.1-t2v"].arch.dim
    return "the tiny test models" if dim == tiny else f"a model of dim {dim}" if dim else f"{_x(shape)} {param}"


def _x(shape) -> str:
    return "×".join(str(s) for s in shape)


def expert_of(path: Path) -> str | None:
    """'high' / 'low' from the file name or its folder (high_noise_model/), else None."""
    for part in (path.stem, path.parent.name):
        if m := _EXPERT.search(part):
            return (m.group(1) or m.group(2)).lower()
    return None


def identify(path: Path) -> LoraFile:
    """A LoraFile from the header alone; `problem` set instead of raising."""
    path = Path(path)
    try:
        infos, _ = read_header(path)
    except UserError as e:
        return LoraFile(path, problem=str(e), bytes=path.stat().st_size if path.exists() else 0)
    keys = [k for k in map(split_key, infos) if k is not None]
    dim = ffn = in_ch = None
    ranks: Counter[int] = Counter()
    blocks = -1
    per_block: Counter[int] = Counter()
    total = 0
    for k in keys:
        shape = infos[k.raw]
        # what attach() keeps as buffers: low-rank factors and the deltas of linear layers; norm,
        # modulation and patch-embedding deltas are added into those (small) parameters instead
        kept = k.kind in ("down", "up", "diff_b") or (k.kind == "diff" and len(shape) == 2)
        kept = kept and "norm" not in k.module and "patch_embedding" not in k.module
        n = math.prod(shape) if kept else 0
        total += n
        if k.kind == "down" and len(shape) == 2:
            ranks[shape[0]] += 1
        if _Q.search(k.module):
            dim = dim or (shape[1] if k.kind == "down" else shape[0] if k.kind in ("up", "diff", "diff_b") else None)
        if _FFN_IN.search(k.module) and k.kind in ("up", "diff_b"):
            ffn = ffn or shape[0]
        if "patch_embedding" in k.module and k.kind == "diff" and len(shape) == 5:
            in_ch = shape[1]
        if m := _BLOCK.search(k.module):
            blocks = max(blocks, int(m.group(1)))
            per_block[int(m.group(1))] += n
    problem = None if keys else f"{path.name}: no LoRA tensors found (0 of {len(infos)} keys are LoRA keys)"
    return LoraFile(path, file_format(keys), dim, ffn, blocks + 1 if blocks >= 0 else None, in_ch,
                    ranks.most_common(1)[0][0] if ranks else None, expert_of(path),
                    any("k_img" in k.module or "add_k_proj" in k.module for k in keys),
                    len(infos), path.stat().st_size, problem, max(per_block.values(), default=0), total)


def lora_dirs(models_dirs) -> list[Path]:
    """`<models dir>/loras` for each models folder (a folder already named loras counts as one)."""
    out = []
    for d in models_dirs:
        d = Path(d).expanduser()
        for cand in (d if d.name == "loras" else d / "loras",):
            if cand.is_dir() and cand.resolve() not in [o.resolve() for o in out]:
                out.append(cand)
    return out


def find_loras(models_dirs) -> list[LoraFile]:
    """Every .safetensors file under each models folder's loras/ (sub-folders too), identified."""
    seen, out = set(), []
    for root in lora_dirs(models_dirs):
        for p in sorted(root.rglob("*.safetensors")):
            if p.name.startswith(".") or any(part.startswith(".") for part in p.relative_to(root).parts[:-1]):
                continue
            if p.resolve() not in seen:
                seen.add(p.resolve())
                out.append(identify(p))
    return out


@dataclass(frozen=True)
class LoraItem:
    """What a person picks: one file, or an A14B high/low pair of files picked together."""
    name: str
    file: LoraFile | None = None
    high: LoraFile | None = None
    low: LoraFile | None = None

    @property
    def files(self) -> list[LoraFile]:
        return [f for f in (self.file, self.high, self.low) if f is not None]

    @property
    def is_pair(self) -> bool:
        return self.high is not None and self.low is not None


def _pair_key(f: LoraFile) -> tuple[str, str] | None:
    """(key, item name): files whose key is equal differ only in the expert word."""
    if f.expert is None:
        return None
    stem, parent = f.path.stem, f.path.parent
    if _EXPERT.search(stem):
        generic = _generic(stem)
        name = generic.replace("{}", "high+low")
        if generic.replace("{}", "").strip("_-. ").lower() in ("", "model", "lora", "noise", "noise_model"):
            name = parent.name                      # Lightning's …-Seko-V1/high_noise_model.safetensors
        return str(parent / generic), name
    return str(parent.parent / _generic(parent.name) / stem), stem   # high_noise_model/x.safetensors


def _generic(name: str) -> str:
    """The name with its expert word (only the word: `x_high_noise` -> `x_{}_noise`) replaced by {}."""
    m = _EXPERT.search(name)
    word = m.group(1) or m.group(2)
    start = m.start(1) if m.group(1) else m.start(2)
    return name[:start] + "{}" + name[start + len(word):]


def group_items(files: list[LoraFile]) -> list[LoraItem]:
    """Pair `…high_noise…` with `…low_noise…` files whose names differ only there (same folder, same
    shapes); everything else is an item of its own."""
    by_key: dict[str, dict[str, LoraFile]] = {}
    names: dict[str, str] = {}
    for f in files:
        if f.problem is None and (kn := _pair_key(f)) is not None:
            by_key.setdefault(kn[0], {}).setdefault(f.expert, f)
            names[kn[0]] = kn[1]
    paired: dict[Path, LoraItem] = {}
    for k, d in by_key.items():
        if set(d) == {"high", "low"} and (d["high"].dim, d["high"].ffn_dim) == (d["low"].dim, d["low"].ffn_dim):
            item = LoraItem(names[k], high=d["high"], low=d["low"])
            paired[d["high"].path] = paired[d["low"].path] = item
    items, done = [], set()
    for f in files:
        item = paired.get(f.path)
        if item is None:
            items.append(LoraItem(f.name, file=f))
        elif id(item) not in done:
            done.add(id(item))
            items.append(item)
    return items


def lora_id(path: Path) -> str:
    """sha256 of the safetensors header bytes and the file size: names the exact file in a video's
    metadata without reading gigabytes (the header lists every tensor's name, dtype, shape and offset)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        body = f.read(min(n, 100_000_000))
    return hashlib.sha256(head + body + struct.pack("<Q", size)).hexdigest()
