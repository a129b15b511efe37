"""torch.compile of the transformer blocks (regional compilation), on CUDA where Triton is installed.

Why not diffusers' `compile_repeated_blocks`: it compiles each block's `_call_impl`, so the block-swap hooks
(wan_app.blockswap) are traced into the compiled region. With torch 2.13 that breaks the graph at the hooks
(`time.perf_counter`, the `.data` moves) and compiles new graphs again on the second step (6 graphs and 8
graph breaks for a 4-block model with 2 swapped blocks; tests/test_compile_blocks.py shows the contrast).
Compiling each block's `forward` leaves every hook outside: one graph serves all blocks of a model and
both A14B experts (the parameters are graph inputs, not constants), and nothing compiles after the first
step. LoRAs (wan_app.lora) replace linears inside the block before this runs, so they are part of it.

The first forward at a new size compiles (tens of seconds on a GPU): wan_app.sampler shows it as its own
"compile" phase and leaves it out of seconds-per-step.
"""
from __future__ import annotations

import importlib.util

import torch
from torch import nn

# torch's default compiler (Triton kernels on CUDA). Tests set a counting eager backend instead.
BACKEND = "inductor"

_graphs = 0                          # graphs compiled in this process (all models)
_warm: set[tuple] = set()            # (a block's layers and tensors, input shape, dtype) already compiled


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def unavailable_reason(device_kind: str, triton: bool) -> str | None:
    """Why compile cannot run here, or None when it can."""
    if device_kind != "cuda":
        return f"torch.compile runs only on an NVIDIA GPU here (this run is on the {device_kind.upper()})"
    if not triton:
        return "torch.compile needs Triton, which is not installed (pip install triton)"
    return None


def graphs_compiled() -> int:
    return _graphs


def _backend(gm: torch.fx.GraphModule, example_inputs):
    global _graphs
    _graphs += 1
    return torch._dynamo.lookup_backend(BACKEND)(gm, example_inputs)


def compile_blocks(model: nn.Module) -> None:
    """Each block's forward becomes a compiled one (an instance attribute over the class's method)."""
    for block in model.blocks:
        if "forward" not in block.__dict__:
            block.forward = torch.compile(block.forward, backend=_backend, fullgraph=False)
    # What dynamo guards on besides the input, read once here (the layers are final by now): the layer
    # kinds (fp8, GGUF, LoRA) and their tensors' dtypes and shapes (a GGUF quant type is a byte shape).
    block = model.blocks[0]
    model._compiled_layers = (tuple(type(m).__name__ for m in block.modules()),
                              tuple((str(p.dtype), tuple(p.shape)) for p in block.parameters()))


def uncompile_blocks(model: nn.Module) -> None:
    for block in model.blocks:
        block.__dict__.pop("forward", None)
    model.__dict__.pop("_compiled_layers", None)


def is_compiled(model: nn.Module) -> bool:
    return getattr(model, "_compiled_layers", None) is not None


def first_forward(model: nn.Module, shape: tuple, dtype: torch.dtype) -> bool:
    """True (once) when a forward of a compiled model on latents of `shape` (the batch it really runs)
    will compile: the first at this size."""
    if not is_compiled(model):
        return False
    key = (model._compiled_layers, tuple(shape), dtype)
    if key in _warm:
        return False
    _warm.add(key)
    return True
