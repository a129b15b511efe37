"""Block-swap benchmark: a full-size random-weight Wan block stack, 0 / half / all blocks swapped,
sync vs async copies; time per forward and peak VRAM, with the planner's estimate when it has one.

    python bench/swap_bench.py --device cuda --model 14b            # full 40-block stack, 32,760 tokens
    python bench/swap_bench.py --device cpu --model 1.3b --blocks 4 --tokens 512

Only the transformer blocks run (no embeddings, no VAE), with cond and uncond as two forwards, as the
engine runs them. On CPU the copies are no-ops, so the numbers there are the hooks' own overhead.
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusers.models.transformers.transformer_wan import WanTransformerBlock  # noqa: E402

from wan_app.blockswap import BlockSwapper  # noqa: E402
from wan_app.fp8 import store_fp8_scaled  # noqa: E402

MODELS = {  # WAN_FACTS: dim, ffn, heads, layers; catalog id for the planner
    "1.3b": dict(dim=1536, ffn=8960, heads=12, layers=30, spec="wan2.1-t2v-1.3b"),
    "14b": dict(dim=5120, ffn=13824, heads=40, layers=40, spec="wan2.1-t2v-14b"),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class BlockStack(nn.Module):
    """The part of WanTransformer3DModel.forward that block swap touches."""

    def __init__(self, blocks: nn.ModuleList):
        super().__init__()
        self.blocks = blocks

    def forward(self, hidden, context, temb, rope):
        for block in self.blocks:
            hidden = block(hidden, context, temb, rope)
        return hidden


def build_stack(cfg: dict, n_blocks: int, dtype: torch.dtype) -> BlockStack:
    # Built on the meta device and filled in place: default init of 14B parameters on CPU takes minutes.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            blocks = nn.ModuleList(WanTransformerBlock(cfg["dim"], cfg["ffn"], cfg["heads"], "rms_norm_across_heads",
                                                       True, 1e-6) for _ in range(n_blocks))
    finally:
        torch.set_default_dtype(previous)
    blocks.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in blocks.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.empty(p.shape, dtype=torch.float32).uniform_(-1, 1, generator=g)
                        .mul_(cfg["dim"] ** -0.5))
    return BlockStack(blocks).eval()


def inputs(cfg: dict, tokens: int, device, dtype):
    head_dim = cfg["dim"] // cfg["heads"]
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(1, tokens, cfg["dim"], generator=g).to(device, dtype)
    context = torch.randn(1, 512, cfg["dim"], generator=g).to(device, dtype)
    temb = torch.randn(1, 6, cfg["dim"], generator=g).mul_(0.1).to(device, dtype)
    angle = torch.rand(1, tokens, 1, head_dim, generator=g) * 6.28
    return hidden, context, temb, (angle.cos().to(device), angle.sin().to(device))


class SyncSwapper(BlockSwapper):
    """The baseline the app's swapper is measured against: no prefetch, copies on the compute stream, so
    each swapped block waits for its own copy (what the overlap saves)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        if self.cuda:
            self._copy_stream = torch.cuda.current_stream(self.device)

    def _owner_pre(self, module, args):
        pass

    def _make_pre(self, i: int):
        def pre(module, args):
            start = time.perf_counter()
            self._load(i)
            if self.cuda:
                torch.cuda.current_stream(self.device).wait_event(self._slot_loaded[self._loaded[i]])
            self.hook_seconds += time.perf_counter() - start
        return pre


def measure(stack: BlockStack, args_in, swapped: int, mode: str, device: torch.device, iters: int) -> dict:
    resident = stack.blocks[: len(stack.blocks) - swapped]
    resident.to(device)
    swapper = (SyncSwapper if mode == "sync" else BlockSwapper)(stack, stack.blocks, swapped, device,
                                                                 notify=print).install()
    cuda = device.type == "cuda"
    try:
        with torch.no_grad():
            stack(*args_in)                                   # warm-up: kernels, allocator
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            swapper.hook_seconds = 0.0
            times = []
            for _ in range(iters):
                start = time.perf_counter()
                stack(*args_in)
                if cuda:
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
            per_forward = sorted(times)[len(times) // 2]      # median: shared machines are noisy
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    finally:
        swapper.remove()
        resident.to("cpu")
        if cuda:
            torch.cuda.empty_cache()
    return dict(swapped=swapped, mode=mode, forward_s=per_forward, peak_gib=peak,
                hook_ms=1000 * swapper.hook_seconds / iters,
                max_on_device=swapper.max_on_device, swapped_gib=swapper.swapped_bytes() / 2**30)


def planner_estimate(spec_id: str, swapped: int, weight_dtype: str, vram_gb: float | None) -> str:
    """The planner's whole-pipeline VRAM estimate for this swap count, if wan_app.planner.plan exists."""
    try:
        from wan_app import hardware, planner
        from wan_app.plan_types import Overrides
        from wan_app.request import Request, resolve
        if not hasattr(planner, "plan"):
            return "n/a (no planner.plan)"
        req, spec = resolve(Request(model=spec_id, prompt="benchmark"))
        hw = hardware.Hardware.simulated(vram_gb=vram_gb or 80.0, ram_gb=128.0)
        plan = planner.plan(hw, spec, req, Overrides(blocks_swapped=swapped, weight_dtype=weight_dtype))
        return f"{plan.est_vram_gb:.2f}"
    except Exception as e:  # noqa: BLE001 — the planner is another module; report, don't crash
        return f"n/a ({type(e).__name__}: {str(e).splitlines()[0][:60] if str(e) else ''})"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", choices=list(MODELS), default="1.3b")
    ap.add_argument("--tokens", type=int, default=None, help="default: 32760 (832x480x81) on cuda, 256 on cpu")
    ap.add_argument("--blocks", type=int, default=None, help="default: all of the model's blocks on cuda, 4 on cpu")
    ap.add_argument("--dtype", choices=list(DTYPES) + ["fp8"], default=None, help="default: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--iters", type=int, default=3, help="timed forwards per configuration")
    a = ap.parse_args(argv)
    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda asked for, but torch sees no CUDA device")
    cfg = MODELS[a.model]
    tokens = a.tokens or (32760 if cuda else 256)
    n_blocks = a.blocks or (cfg["layers"] if cuda else 4)
    weight = a.dtype or ("bf16" if cuda else "fp32")
    compute = torch.bfloat16 if weight == "fp8" and cuda else (torch.float32 if weight == "fp8" else DTYPES[weight])
    iters = a.iters
    device = torch.device("cuda:0" if cuda else "cpu")

    stack = build_stack(cfg, n_blocks, compute)
    if weight == "fp8":
        store_fp8_scaled(stack)
    args_in = inputs(cfg, tokens, device, compute)
    vram = torch.cuda.get_device_properties(device).total_memory / 2**30 if cuda else None

    subset = "" if n_blocks == cfg["layers"] else f" — a subset: {n_blocks} of {cfg['layers']} blocks"
    dev_name = torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"## Block swap: Wan {a.model} stack (dim {cfg['dim']}, ffn {cfg['ffn']}, {cfg['heads']} heads){subset}")
    print(f"device: {dev_name}; tokens {tokens}; weights {weight}; compute {str(compute).split('.')[-1]}; "
          f"{iters} timed forwards per row (median; a CFG step = 2 forwards); torch {torch.__version__}")
    if not cuda:
        print("CPU: copies are no-ops, so the swap cost is the hooks' host time ('hook ms / fwd'); "
              "'s / forward' is the median of the timed forwards and moves with other load on the machine.")
    print()
    print("| swapped | mode | s / forward | vs resident | s / step (2 fwd) | hook ms / fwd | peak VRAM GiB | planner est. GiB "
          "| max swapped blocks on device | swapped GiB in RAM |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    measure(stack, args_in, 0, "async", device, 1)       # process-wide warm-up (kernels, thread pools)
    base = None
    for swapped in sorted({0, n_blocks // 2, n_blocks}):
        for mode in (["async"] if swapped == 0 else ["sync", "async"]):
            r = measure(stack, args_in, swapped, mode, device, iters)
            base = base or r["forward_s"]
            peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "—"
            est = planner_estimate(cfg["spec"], swapped, weight, vram) if n_blocks == cfg["layers"] \
                else "n/a (subset)"
            print(f"| {swapped}/{n_blocks} | {mode if swapped else '—'} | {r['forward_s']:.4f} | "
                  f"{r['forward_s'] / base:.2f}× | {2 * r['forward_s']:.4f} | {r['hook_ms']:.3f} | {peak} | {est} | "
                  f"{r['max_on_device']} | {r['swapped_gib']:.3f} |")
    print()
    print("Peak VRAM here is the block stack alone (weights + activations of one forward); the planner's "
          "estimate is for the whole pipeline at the model's default size, so expect it to be higher.")


if __name__ == "__main__":
    main()
