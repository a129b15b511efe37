"""LoRA benchmark: a real-size Wan2.1 1.3B block stack (dim 1536, ffn 8960, random weights; a few of
its 30 blocks) with a rank-64 LoRA on every block linear, on bf16 and scaled-fp8 weights:

- none: no LoRA (the floor);
- forward time (what wan_app.lora ships): y = W·x + s·up·(down·x), no copy of W;
- per-layer merge: each call builds W + s·up·down from the (upcast) weight, then one matmul;
- merged beforehand: W + s·up·down stored in the weights' own dtype (for fp8: requantized).

    python bench/lora_bench.py                       # CPU: 2 blocks, 256 tokens
    python bench/lora_bench.py --device cuda --blocks 30 --tokens 32760

The error column is each output against the same stack in fp32 with the LoRA merged in fp32, relative;
"LoRA effect" is how far that reference is from the stack without the LoRA, so an error near it means
the LoRA was lost. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from swap_bench import MODELS, build_stack, inputs  # noqa: E402  (the same stack and inputs as the swap bench)

from wan_app.fp8 import ScaledFp8Linear, quantize, store_fp8_scaled  # noqa: E402
from wan_app.lora import LoraWeights, LowRank, attach  # noqa: E402

LINEARS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
           "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")


def make_lora(stack, rank: int) -> LoraWeights:
    g = torch.Generator().manual_seed(5)
    low = {}
    for i in range(len(stack.blocks)):
        for m in LINEARS:
            lin = stack.blocks[i].get_submodule(m)
            o, n = lin.out_features, lin.in_features
            down = torch.randn(rank, n, generator=g) * n ** -0.5
            up = torch.randn(o, rank, generator=g) * 4.0 * (n * rank) ** -0.5   # a few % on the output
            low[f"blocks.{i}.{m}"] = LowRank(down.to(torch.bfloat16), up.to(torch.bfloat16), 1.0)
    return LoraWeights("bench-rank%d" % rank, None, "bench", low_rank=low)


class PerLayerMerge(nn.Module):
    """The alternative to forward-time LoRA: W' = upcast(W) + s·up·down built per call (bench only)."""

    def __init__(self, base, lr: LowRank, s: float, dtype):
        super().__init__()
        self.base = base
        self.down, self.up = lr.down.to(dtype), (lr.up.float() * s * lr.scale).to(dtype)

    def forward(self, x):
        w = self.base.dequantized_weight(x.dtype) if isinstance(self.base, ScaledFp8Linear) else self.base.weight
        w = w + self.up @ self.down
        return F.linear(x, w, None if self.base.bias is None else self.base.bias.to(x.dtype))


def per_layer(stack, lora: LoraWeights, s: float, dtype):
    for name, lr in lora.low_rank.items():
        parent, _, leaf = name.rpartition(".")
        mod = stack.get_submodule(parent)
        setattr(mod, leaf, PerLayerMerge(getattr(mod, leaf), lr, s, dtype))
    return stack


def merge_into(stack, lora: LoraWeights, s: float, fp8: bool):
    for name, lr in lora.low_rank.items():
        lin = stack.get_submodule(name)
        delta = (lr.up.float() * (s * lr.scale)) @ lr.down.float()
        if fp8:
            w = lin.dequantized_weight(torch.float32) + delta
            lin.weight.data, lin.weight_scale.data = quantize(w)
        else:
            lin.weight.data = (lin.weight.data.float() + delta).to(lin.weight.dtype)
    return stack


def timed_rounds(stacks: dict, args_in, rounds: int, cuda: bool) -> dict:
    """Median seconds per forward for each stack, timed round-robin (one forward of each per round) so
    that load from other processes on a shared machine hits every variant alike."""
    times = {k: [] for k in stacks}
    outs = {}
    with torch.no_grad():
        for k, st in stacks.items():
            outs[k] = st(*args_in).float().cpu()                     # warm-up, and the output
        for _ in range(rounds):
            for k, st in stacks.items():
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                st(*args_in)
                if cuda:
                    torch.cuda.synchronize()
                times[k].append(time.perf_counter() - t)
    return {k: (sorted(v)[len(v) // 2], outs[k]) for k, v in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="timed forwards per variant (round-robin)")
    a = ap.parse_args(argv)
    cuda = a.device == "cuda"
    dev = torch.device("cuda:0" if cuda else "cpu")
    cfg = MODELS["1.3b"]
    s = 1.0
    ref_stack = build_stack(cfg, a.blocks, torch.float32)
    lora = make_lora(ref_stack, a.rank)
    args32 = inputs(cfg, a.tokens, dev, torch.float32)
    with torch.no_grad():
        plain32 = copy.deepcopy(ref_stack).to(dev)(*args32).float().cpu()
        ref = merge_into(copy.deepcopy(ref_stack), lora, s, fp8=False).to(dev)(*args32).float().cpu()
    effect = ((ref - plain32).norm() / ref.norm()).item()
    name = torch.cuda.get_device_name(dev) if cuda else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"## LoRA at forward time vs merged: Wan2.1 1.3B block stack (dim {cfg['dim']}, ffn {cfg['ffn']}), "
          f"{a.blocks} of {cfg['layers']} blocks, random weights")
    print(f"device: {name}; tokens {a.tokens}; rank-{a.rank} LoRA on all {len(LINEARS)} linears of every block, "
          f"strength {s}; compute bf16; median of {a.rounds} timed forwards per row, round-robin over the rows of a "
          f"weight type, after one warm-up; torch {torch.__version__}")
    print(f"LoRA effect (fp32, with vs without): {effect:.4f} relative")
    print()
    print("| weights | LoRA applied | s / forward | vs no LoRA | extra bytes held | rel. error vs fp32 merged |")
    print("|---|---|---|---|---|---|")
    hows = ("none", "forward time", "per-layer merge", "merged beforehand")
    for weights in ("bf16", "fp8"):
        stacks, extra = {}, {}
        for how in hows:
            stack = build_stack(cfg, a.blocks, torch.bfloat16)
            extra[how] = 0
            if how == "forward time":
                extra[how] = attach(stack, [(lora, s)], dtype=torch.bfloat16).bytes
            if weights == "fp8":
                store_fp8_scaled(stack)
            if how == "per-layer merge":
                per_layer(stack, lora, s, torch.bfloat16)
                extra[how] = lora.bytes
            if how == "merged beforehand":
                merge_into(stack, lora, s, fp8=weights == "fp8")
            stacks[how] = stack.to(dev)
        res = timed_rounds(stacks, inputs(cfg, a.tokens, dev, torch.bfloat16), a.rounds, cuda)
        base_t = res["none"][0]
        for how in hows:
            t, out = res[how]
            err = ((out - ref).norm() / ref.norm()).item()
            print(f"| {weights} | {how} | {t:.3f} | {t / base_t:.2f}× | {extra[how] / 2**20:.1f} MiB | {err:.4f} |")
        del stacks
    print()
    print("'extra bytes held': LoRA tensors kept next to the weights (rank-64 factors in bf16); merging "
          "beforehand holds none but cannot be undone without a copy, and for fp8 it re-rounds W + ΔW to "
          "fp8, where a small ΔW is partly lost (compare its error with the LoRA effect).")


if __name__ == "__main__":
    main()
