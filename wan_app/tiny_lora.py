"""Tiny random LoRAs for the tiny Wan models (wan_app.tiny), written in every key layout the app reads.

`python -m wan_app.tiny_lora DIR` writes DIR/loras/*.safetensors. `make()` returns the ground truth in
diffusers names (what a merge W + s·(α/r)·up·down, + s·diff must equal), `write()` one layout of it.
Values are rounded to bf16 and stored as bf16 (as most published LoRAs are), so the file holds exactly
the ground truth.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoints import convert

LINEARS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
           "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")
# layouts: (name, what it can carry). LightX2V's and Kijai's extracted files carry no alpha (scale 1).
LAYOUTS = ("comfyui", "lightx2v", "ai-toolkit", "kohya", "diffusers")


@dataclass
class TinyLora:
    low_rank: dict[str, tuple[torch.Tensor, torch.Tensor, float | None]] = field(default_factory=dict)
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)     # diffusers parameter -> delta

    def scale(self, module: str) -> float:
        down, _, alpha = self.low_rank[module]
        return 1.0 if alpha is None else alpha / down.shape[0]


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


def make(shapes: dict[str, tuple[int, ...]], seed: int = 0, rank: int = 4, alpha: float | None = 2.0,
         extras: str | None = "all", head: bool = True, blocks: list[int] | None = None) -> TinyLora:
    """Low-rank updates on every block linear (and the head). extras="all" adds the full deltas ComfyUI
    and LightX2V files carry: every linear's bias (diff_b), the cross-attention norm and q/k norms
    (diff), each block's modulation table (diff_m), the head's weight and the patch embedding;
    extras="bias" only the biases (what diffusers reads: lora_B.bias); None none."""
    g = torch.Generator().manual_seed(seed)
    out = TinyLora()
    blocks = blocks if blocks is not None else sorted({int(n.split(".")[1]) for n in shapes if n.startswith("blocks.")})
    modules = [f"blocks.{i}.{m}" for i in blocks for m in LINEARS] + (["proj_out"] if head else [])
    for m in modules:
        o, i = shapes[f"{m}.weight"]
        down = _bf16(torch.randn(rank, i, generator=g) / i ** 0.5)
        up = _bf16(0.3 * torch.randn(o, rank, generator=g) / rank ** 0.5)
        out.low_rank[m] = (down, up, alpha)
    if extras:
        params = [f"{m}.bias" for m in modules]
        if extras == "all":
            params += [f"blocks.{i}.{p}" for i in blocks for p in ("norm2.weight", "norm2.bias", "attn1.norm_q.weight",
                                                                    "attn1.norm_k.weight", "scale_shift_table")]
            params += ["proj_out.weight", "patch_embedding.weight", "patch_embedding.bias"] if head else []
        for p in params:
            out.deltas[p] = _bf16(0.05 * torch.randn(shapes[p], generator=g))
    return out


def _official(names: list[str]) -> dict[str, str]:
    return dict(zip(names, convert.dit_diffusers_to_official({n: None for n in names})))


def tensors(lora: TinyLora, layout: str) -> tuple[dict[str, torch.Tensor], dict[str, str], TinyLora]:
    """(state dict, safetensors metadata, the part of `lora` this layout carries)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    sd: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {}
    carried = TinyLora(dict(lora.low_rank), {})
    names = list(dict.fromkeys([f"{m}.weight" for m in lora.low_rank] + list(lora.deltas)))
    off = _official(names)
    if layout == "diffusers":
        alphas = {lr[2] for lr in lora.low_rank.values()}
        for m, (down, up, alpha) in lora.low_rank.items():
            sd[f"transformer.{m}.lora_A.weight"], sd[f"transformer.{m}.lora_B.weight"] = down, up
        for p, d in lora.deltas.items():           # PEFT carries bias deltas only (lora_B.bias),
            m, leaf = p.rsplit(".", 1)               # which it scales by α/r like lora_B·lora_A
            if leaf == "bias" and m in lora.low_rank:
                sd[f"transformer.{m}.lora_B.bias"] = d / lora.scale(m)   # exact: α/r is a power of 2 here
                carried.deltas[p] = d
        (alpha,) = alphas
        if alpha is not None:   # as diffusers' save_lora_weights writes it: the LoraConfig, keys prefixed
            rank = next(iter(lora.low_rank.values()))[0].shape[0]
            config = {"r": rank, "lora_alpha": alpha, "target_modules": sorted(lora.low_rank),
                      "lora_bias": bool(carried.deltas), "use_dora": False, "rank_pattern": {}, "alpha_pattern": {}}
            meta["lora_adapter_metadata"] = json.dumps({f"transformer.{k}": v for k, v in config.items()})
        return {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}, meta, carried
    low = {"comfyui": ("lora_down.weight", "lora_up.weight"), "lightx2v": ("lora_down.weight", "lora_up.weight"),
           "ai-toolkit": ("lora_A.weight", "lora_B.weight"), "kohya": ("lora_down.weight", "lora_up.weight")}[layout]
    with_alpha = layout in ("comfyui", "kohya")

    def key(official_module: str, suffix: str) -> str:
        if layout == "kohya":
            return f"lora_unet_{official_module.replace('.', '_')}.{suffix}"
        return f"diffusion_model.{official_module}.{suffix}"

    if not with_alpha:
        carried.low_rank = {m: (d, u, None) for m, (d, u, _) in lora.low_rank.items()}
    for m, (down, up, alpha) in lora.low_rank.items():
        om = off[f"{m}.weight"][: -len(".weight")]
        sd[key(om, low[0])], sd[key(om, low[1])] = down, up
        if with_alpha and alpha is not None:
            sd[key(om, "alpha")] = torch.tensor(float(alpha))
    for p, d in lora.deltas.items():
        o = off[p]
        if o.endswith(".modulation"):
            sd[key(o[: -len(".modulation")], "diff_m")] = d
        else:
            module, leaf = o.rsplit(".", 1)
            sd[key(module, "diff" if leaf == "weight" else "diff_b")] = d
        carried.deltas[p] = d
    return {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}, meta, carried


def write(lora: TinyLora, layout: str, path: Path) -> TinyLora:
    """Write `lora` in `layout` to `path` (atomically); returns what the file carries."""
    from safetensors.torch import save_file
    sd, meta, carried = tensors(lora, layout)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata=meta or None)
    os.replace(tmp, path)
    return carried


def foreign(path: Path, dim: int, ffn_dim: int, rank: int = 1) -> Path:
    """A LoRA with a real model's shapes (e.g. Wan2.1 1.3B: 1536, 8960) on two layers of block 0: a few
    KB, for the 'made for another base' refusals."""
    g = torch.Generator().manual_seed(0)
    sd = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(rank, dim, generator=g),
          "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(dim, rank, generator=g),
          "diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.randn(rank, dim, generator=g),
          "diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.randn(ffn_dim, rank, generator=g)}
    from safetensors.torch import save_file
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, str(path))
    return Path(path)


def write_all(models_dir: Path) -> dict[str, Path]:
    """One tiny LoRA per layout for the tiny Wan2.1 model, and a high/low pair for tiny A14B, under
    models_dir/loras/."""
    from . import tiny
    root = Path(models_dir) / "loras"
    shapes = {n: tuple(p.shape) for n, p in tiny._transformer(16, 1).named_parameters()}
    out = {}
    for i, layout in enumerate(LAYOUTS):
        p = root / f"tiny_wan_{layout}.safetensors"
        write(make(shapes, seed=10 + i), layout, p)
        out[layout] = p
    for j, expert in enumerate(("high", "low")):
        p = root / f"tiny_wan2.2_a14b_{expert}_noise_lora.safetensors"
        write(make(shapes, seed=20 + j), "comfyui", p)
        out[f"a14b-{expert}"] = p
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m wan_app.tiny_lora DIR   (writes tiny random LoRAs in every layout under DIR/loras)")
        return 2
    for name, path in write_all(Path(argv[0])).items():
        print(f"{name:14s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
