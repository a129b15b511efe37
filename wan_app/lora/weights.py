"""Read one LoRA file for one model: match its keys to the model's parameters from the header alone,
refuse it before any tensor is read when it was made for other shapes, then read only what applies."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .. import catalog
from ..checkpoints.headers import read_safetensors_header
from ..errors import UserError
from .formats import Key, file_format, name_map, peft_alphas, split_key

WRAPPED = ".lora_base."     # the child name LoraLinear (apply.py) gives the layer it wraps


@dataclass
class LowRank:
    down: torch.Tensor       # [rank, in]
    up: torch.Tensor         # [out, rank]
    scale: float             # alpha / rank; 1.0 when the file has no alpha (ComfyUI, LightX2V, PEFT do so)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class LoraWeights:
    """One LoRA, keyed by WanTransformer3DModel names: `low_rank[module]` and full `deltas[parameter]`."""
    name: str
    path: Path | None
    format: str
    low_rank: dict[str, LowRank] = field(default_factory=dict)     # "blocks.0.attn1.to_q" -> pair
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)  # "blocks.0.norm2.weight" -> delta
    unmatched: dict[str, str] = field(default_factory=dict)        # file key -> why nothing takes it
    n_tensors: int = 0

    @property
    def bytes(self) -> int:
        ts = [t for lr in self.low_rank.values() for t in (lr.down, lr.up)] + list(self.deltas.values())
        return sum(t.numel() * t.element_size() for t in ts)

    def notice(self) -> str | None:
        """One line naming the keys that apply to nothing here (never dropped silently)."""
        if not self.unmatched:
            return None
        names = list(self.unmatched)
        shown = ", ".join(f"{k} ({self.unmatched[k]})" for k in names[:4])
        more = f" and {len(names) - 4} more" if len(names) > 4 else ""
        return (f"LoRA {self.name}: {len(names)} of {self.n_tensors} tensors apply to nothing in this model "
                f"and are skipped: {shown}{more}")


# ---------------------------------------------------------------------------------------------- shapes
def _spec_params(spec) -> dict[str, tuple[int, ...]]:
    return dict(_spec_params_cached(spec.id))


@lru_cache(maxsize=8)
def _spec_params_cached(model_id: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from diffusers import WanTransformer3DModel
    spec = catalog.get(model_id)
    a = spec.arch
    # freq_dim: 256 in every official config (shared/WAN_FACTS.md); wan_app.tiny builds its models with 32.
    with torch.device("meta"):
        m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=a.num_heads, attention_head_dim=a.head_dim,
                                  in_channels=a.in_channels, out_channels=a.out_channels, text_dim=spec.text_dim,
                                  freq_dim=32 if spec.tiny else 256, ffn_dim=a.ffn_dim, num_layers=a.num_layers)
    return tuple((n, tuple(p.shape)) for n, p in m.named_parameters())


def target_shapes(target) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape for a loaded transformer (LoRA wrappers seen through) or a ModelSpec (from
    a meta-device model: no memory)."""
    if isinstance(target, nn.Module):
        return {n.replace(WRAPPED, "."): tuple(p.shape) for n, p in target.named_parameters()}
    return _spec_params(target)


def _target_name(target) -> str:
    spec = getattr(target, "spec", None) or (target if isinstance(target, catalog.ModelSpec) else None)
    if spec is not None:
        return spec.name
    cfg = getattr(target, "config", None)
    if cfg is not None:
        return f"this model (dim {cfg.num_attention_heads * cfg.attention_head_dim})"
    return "this model"


def _x(shape) -> str:
    return "×".join(str(s) for s in shape)


# ---------------------------------------------------------------------------------------------- matching
@dataclass
class _Match:
    assign: list[tuple[Key, str]] = field(default_factory=list)       # key -> diffusers parameter
    unmatched: dict[str, str] = field(default_factory=dict)
    mismatched: list[tuple[str, str, tuple, tuple]] = field(default_factory=list)


def _match(infos: dict[str, tuple[int, ...]], shapes: dict[str, tuple[int, ...]]) -> _Match:
    nm = name_map(tuple(shapes))
    out = _Match()
    groups: dict[tuple[str, str], dict[str, Key]] = defaultdict(dict)
    for raw in infos:
        key = split_key(raw)
        if key is None:
            out.unmatched[raw] = "not a LoRA tensor this app reads"
        else:
            groups[(key.naming, key.module)][key.kind] = key
    for kinds in groups.values():
        pair = [kinds.pop(k) for k in ("down", "up", "alpha") if k in kinds]
        if pair:
            _match_pair(pair, infos, shapes, nm, out)
        for key in kinds.values():                       # diff / diff_b / diff_m: full deltas
            param = nm.param(key)
            if param is None:
                out.unmatched[key.raw] = "no such parameter in this model"
            elif tuple(infos[key.raw]) != shapes[param]:
                out.mismatched.append((key.raw, param, tuple(infos[key.raw]), shapes[param]))
            else:
                out.assign.append((key, param))
    return out


def _match_pair(keys: list[Key], infos, shapes, nm, out: _Match) -> None:
    by = {k.kind: k for k in keys}
    if "down" not in by or "up" not in by:
        for k in keys:
            out.unmatched[k.raw] = "half of a low-rank pair (lora_down and lora_up must both be there)"
        return
    param = nm.param(by["down"])
    if param is None:
        for k in keys:
            out.unmatched[k.raw] = "no such layer in this model"
        return
    want = shapes[param]
    down, up = tuple(infos[by["down"].raw]), tuple(infos[by["up"].raw])
    if len(want) != 2:
        for k in keys:
            out.unmatched[k.raw] = f"low-rank update of a non-linear layer ({param}, {_x(want)}) is not supported"
        return
    if len(down) != 2 or len(up) != 2 or down[0] != up[1]:
        for k in keys:
            out.unmatched[k.raw] = f"lora_down {_x(down)} and lora_up {_x(up)} do not form a low-rank pair"
        return
    if (up[0], down[1]) != want:
        out.mismatched.append((by["up"].raw, param, (up[0], down[1]), want))
        return
    out.assign += [(k, param) for k in keys]


def _refuse_other_base(path_name: str, target, m: _Match) -> UserError:
    from .find import describe_dims
    # name the most telling tensor: a self-attention projection (dim × dim), else any block tensor
    raw, param, got, want = min(m.mismatched, key=lambda x: (".attn1." not in x[1], not x[1].startswith("blocks."),
                                                             x[1]))
    made_for = describe_dims(got, param)
    return UserError("lora", f"{path_name} was made for {made_for}: its {param} is {_x(got)}, "
                             f"{_target_name(target)} has {_x(want)}",
                     "choose a LoRA made for this model (the LoRA list shows the base each one fits)")


# ---------------------------------------------------------------------------------------------- loading
def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and metadata of a LoRA file; one UserError naming the file when it is unreadable."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError("lora", f"{path.name} is not a .safetensors file",
                        "only .safetensors LoRAs are read (they cannot run code)")
    if not path.is_file():
        raise UserError("lora", f"{path} does not exist", "check the path, or put the file in a loras/ folder")
    try:
        infos, meta = read_safetensors_header(path)
    except UserError as e:
        raise UserError("lora", e.problem.replace("cannot be read", "is not a readable LoRA"),
                        "download the LoRA again or remove it from the loras folder") from None
    return {k: v.shape for k, v in infos.items()}, meta


def load_lora(path: str | Path, target) -> LoraWeights:
    """Match `path` to `target` (a loaded WanTransformer3DModel, or a catalog ModelSpec) and read the
    tensors that apply. Raises UserError: unreadable file, made for other shapes (both named), or no key
    applying at all ("0 of N tensors match this model")."""
    path = Path(path)
    infos, meta = read_header(path)
    shapes = target_shapes(target)
    m = _match(infos, shapes)
    if m.mismatched:
        raise _refuse_other_base(path.name, target, m)
    if not m.assign:
        raise UserError("lora", f"{path.name}: 0 of {len(infos)} tensors match this model "
                                f"({_target_name(target)})",
                        "it is not a LoRA for a Wan DiT, or for another kind of model")
    tensors = _read(path, [k.raw for k, _ in m.assign])
    lora_alpha, alpha_pattern = peft_alphas(meta)
    out = LoraWeights(name=path.name, path=path, format=file_format([k for k, _ in m.assign]),
                      unmatched=m.unmatched, n_tensors=len(infos))
    pairs: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    peft_bias: list[str] = []
    for key, param in m.assign:
        if key.kind in ("down", "up", "alpha"):
            pairs[param.rsplit(".", 1)[0]][key.kind] = tensors[key.raw]
            continue
        out.deltas[param] = out.deltas[param] + tensors[key.raw] if param in out.deltas else tensors[key.raw]
        if key.raw.endswith(".lora_B.bias"):
            peft_bias.append(param)
    for module, t in pairs.items():
        rank = t["down"].shape[0]
        alpha = float(t["alpha"].float().reshape(-1)[0]) if "alpha" in t else alpha_pattern.get(module, lora_alpha)
        out.low_rank[module] = LowRank(t["down"], t["up"], 1.0 if alpha is None else alpha / rank)
    for param in peft_bias:
        # PEFT's lora_B is a Linear whose bias passes through the same α/r scaling as lora_B·lora_A·x
        # (peft/tuners/lora/layer.py: result + lora_B(lora_A(x)) * scaling); a .diff_b is added as it is.
        lr = out.low_rank.get(param.rsplit(".", 1)[0])
        if lr is not None and lr.scale != 1.0:
            out.deltas[param] = out.deltas[param].float() * lr.scale
    return out


def _read(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {n: f.get_tensor(n) for n in names}
    except Exception as e:  # a header that parses but data that does not: one message naming the file
        raise UserError("lora", f"{path.name} is not a readable LoRA ({type(e).__name__}: {str(e)[:160]})",
                        "download the LoRA again or remove it from the loras folder") from None
