"""Partial block swap: the last K transformer blocks live in (pinned) CPU memory and stream in per forward.

Why by hand and not diffusers' group offloading (`apply_group_offloading(..., use_stream=True)`), which
was tried on a sub-module holding only the swapped blocks:
- its prefetch order is learned by a hook on the *top* module's forward; a container of the swapped
  blocks is never called (WanTransformer3DModel loops over `self.blocks`), so the order is never learned
  and every block loads itself, blocking, with no overlap;
- it waits with host-side `stream.synchronize()` (before each load and, without record_stream, after
  each block), which stops the CPU from queueing work ahead of the GPU;
- each load allocates fresh device tensors, so a CPU that runs ahead can hold many blocks at once and
  the caching allocator fragments on 100–335 MiB blocks ("OOM while VRAM is free");
- applied to the whole transformer it has no partial mode: every block and the embeddings move.
So this module does what FramePack's / Wan2GP's swappers do, in one small class: two fixed device
slots, copies on a side stream into slot j%2 while block j-1 computes, CUDA events for ordering (the
compute stream waits for "block j loaded", the copy stream waits for "slot free"), no host syncs.
At most two swapped blocks are on the device at any time, whatever the host does.

cond and uncond run as two forwards, so each swapped block crosses PCIe twice per step. Sharing one
trip would need the engine to batch cond+uncond into one forward (batch 2: activations double) —
a follow-up for the engine/planner, not done here.

On CPU (device "cpu") the same hooks run with the copies as no-ops, so tests exercise the logic.
"""
from __future__ import annotations

from typing import Callable

import time

import torch
from torch import nn


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return list(module.parameters()) + list(module.buffers())


class BlockSwapper:
    def __init__(self, owner: nn.Module, blocks: nn.ModuleList, count: int, device: str | torch.device,
                 notify: Callable[[str], None] = print):
        if not 0 <= count <= len(blocks):
            raise ValueError(f"cannot swap {count} of {len(blocks)} blocks")
        self.owner, self.blocks, self.count = owner, blocks, count
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.first = len(blocks) - count
        self.swapped_indices = list(range(self.first, len(blocks)))
        self._notify = notify
        self._handles: list = []
        self._homes: dict[int, list[torch.Tensor]] = {}    # block index -> CPU tensors, in _tensors order
        self._slots: list[list[torch.Tensor]] = []         # two sets of device tensors shaped like a block
        self._loaded: dict[int, int] = {}                  # block index -> slot it sits in
        self.max_on_device = 0                             # most swapped blocks on the device at once
        self.transfers = 0                                 # block loads issued (tests, benchmark)
        self.hook_seconds = 0.0                            # host time spent inside the hooks (benchmark)
        if self.cuda:
            self._copy_stream = torch.cuda.Stream(self.device)
            self._slot_loaded = [torch.cuda.Event(), torch.cuda.Event()]
            self._slot_free = [torch.cuda.Event(), torch.cuda.Event()]

    # ---- setup / teardown -------------------------------------------------------------------------
    def install(self) -> "BlockSwapper":
        if self.count == 0:
            return self
        pin_failed = None
        for i in self.swapped_indices:
            homes = []
            for t in _tensors(self.blocks[i]):
                home = t.data if t.device.type == "cpu" else t.data.to("cpu")
                if self.cuda and not home.is_pinned() and pin_failed is None:
                    try:
                        home = home.pin_memory()   # one tensor at a time: peak extra RAM is one tensor
                    except RuntimeError as e:      # pinned memory is page-locked RAM and can run out
                        pin_failed = str(e).splitlines()[0]
                t.data = home
                homes.append(home)
            self._homes[i] = homes
        if pin_failed:
            self._notify(f"block swap: could not pin memory ({pin_failed}); copies will be slower")
        if self.cuda:
            ref = self._homes[self.first]
            for i in self.swapped_indices:
                if [(h.shape, h.dtype) for h in self._homes[i]] != [(h.shape, h.dtype) for h in ref]:
                    raise ValueError("block swap needs swapped blocks of one shape (all Wan blocks are)")
            self._slots = [[torch.empty(h.shape, dtype=h.dtype, device=self.device) for h in ref]
                           for _ in range(2)]
        self._handles.append(self.owner.register_forward_pre_hook(self._owner_pre))
        for i in self.swapped_indices:
            self._handles.append(self.blocks[i].register_forward_pre_hook(self._make_pre(i)))
            self._handles.append(self.blocks[i].register_forward_hook(self._make_post(i)))
        return self

    def remove(self) -> None:
        """Hooks off, every swapped block back on its CPU tensors, device slots freed."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()
        for i in list(self._loaded):
            self._drop(i)
        self._slots = []

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    # ---- hooks ------------------------------------------------------------------------------------
    def _owner_pre(self, module, args):
        # Start the first swapped block's copy at forward start, so it overlaps the embeddings and the
        # resident blocks.
        self._load(self.first)

    def _make_pre(self, i: int):
        def pre(module, args):
            start = time.perf_counter()
            self._load(i)                                    # no-op when prefetched
            if self.cuda:
                torch.cuda.current_stream(self.device).wait_event(self._slot_loaded[self._loaded[i]])
            if i + 1 < len(self.blocks):
                self._load(i + 1)                            # overlaps with block i's compute
            self.hook_seconds += time.perf_counter() - start
        return pre

    def _make_post(self, i: int):
        def post(module, args, output):
            start = time.perf_counter()
            if self.cuda:
                self._slot_free[self._loaded[i]].record(torch.cuda.current_stream(self.device))
            self._drop(i)
            self.hook_seconds += time.perf_counter() - start
        return post

    # ---- moves ------------------------------------------------------------------------------------
    def _load(self, i: int) -> None:
        if i in self._loaded:
            return
        slot = (i - self.first) % 2
        tensors = _tensors(self.blocks[i])
        if self.cuda:
            stream = self._copy_stream
            with torch.cuda.stream(stream):
                stream.wait_event(self._slot_free[slot])   # the slot's previous block is done computing
                for t, home, dst in zip(tensors, self._homes[i], self._slots[slot]):
                    dst.copy_(home, non_blocking=True)
                    t.data = dst
                self._slot_loaded[slot].record(stream)
        self._loaded[i] = slot
        self.transfers += 1
        self.max_on_device = max(self.max_on_device, len(self._loaded))

    def _drop(self, i: int) -> None:
        if self._loaded.pop(i, None) is None:
            return
        for t, home in zip(_tensors(self.blocks[i]), self._homes[i]):
            t.data = home

    def swapped_bytes(self) -> int:
        return sum(h.numel() * h.element_size() for hs in self._homes.values() for h in hs)
