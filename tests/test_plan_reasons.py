"""Every number in a plan's reasons equals the plan field it explains, over the whole simulated table.

The reasons are what a user reads; the fields are what runs. Each pattern below finds a number in the
text and names the field it must equal (GB shown with one decimal).
"""
from __future__ import annotations

import itertools
import re

import pytest

from wan_app.catalog import MODELS
from wan_app.hardware import Hardware
from wan_app.plan_types import DiskWeights, Overrides
from wan_app.planner import plan, replan_after_oom

M13, M14, A14, M5, I2V = (MODELS[k] for k in ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-t2v-a14b",
                                               "wan2.2-ti2v-5b", "wan2.1-i2v-14b-480p"))
SIZES = {M13.id: [(832, 480)], M14.id: [(832, 480), (1280, 720)], A14.id: [(832, 480), (1280, 720)],
         M5.id: [(1280, 704)], I2V.id: [(832, 464)]}
MACHINES = [Hardware.simulated(v, r) for v, r in itertools.product((6, 8, 12, 16, 24, 48, 80), (16, 32, 64, 128))]
MACHINES += [Hardware.simulated(None, r) for r in (16, 32, 64)]
MACHINES += [Hardware.simulated(None, r, mps=True) for r in (32, 128)]
MACHINES += [Hardware.simulated(12, 32, cc=(7, 5))]
DISKS = [DiskWeights(), DiskWeights(dit="fp8", text_encoder="fp8"), DiskWeights(dit="fp16", text_encoder="bf16")]


def _gb(x: float) -> str:
    return f"{x:.1f}"


def check_reasons_match(p) -> int:
    """Assert every number the patterns find; returns how many were checked."""
    text = "\n".join(p.reasons)
    checked = 0

    def expect(pattern, *values):
        nonlocal checked
        for mt in re.finditer(pattern, text):
            assert mt.groups() == tuple(str(v) for v in values), (pattern, mt.group(0), values)
            checked += 1

    expect(r"(\d+) of (\d+) blocks swapped", p.blocks_swapped, p.blocks_total)
    if p.blocks_swapped == 0:
        expect(r"All (\d+) blocks resident", p.blocks_total)
    else:
        assert "blocks resident" not in text
        expect(r"(\d+) blocks fit in ([\d.]+) GB", p.blocks_total - p.blocks_swapped, _gb(p.vram_budget_gb))
        expect(r"the last (\d+),", p.blocks_swapped)
    expect(r"(\d+) block copies per step instead", p.blocks_swapped)
    expect(r"Estimated peak: VRAM ([\d.]+) GB", _gb(p.est_vram_gb))
    expect(r"RAM ([\d.]+) GB that must fit \+ ([\d.]+) GB of mapped", _gb(p.est_ram_gb), _gb(p.est_file_gb))
    expect(r"Frames: up to (\d+) fit", p.max_frames)
    expect(r"; ([\d.]+) GB usable after a", _gb(p.vram_budget_gb))
    expect(r"RAM: [\d.]+ GB; ([\d.]+) GB usable", _gb(p.ram_budget_gb))
    expect(r"umT5-xxl text encoder on (\S+) in (\w+)",
           "the" if p.text_encoder_device == "cpu" else p.text_encoder_device, p.text_encoder_dtype)
    expect(r"tiling (on|off)", "on" if p.vae_tiling else "off")
    expect(r"Attention: (\w+)", p.attention_backend)
    expect(r"Weights in (\w+) \(", p.weight_dtype)
    expect(r"→ (\w+) \(", p.weight_dtype)
    if p.cfg_passes == 1:
        assert "CFG 1: one forward per step" in text and "batch of 2" not in text
    assert ("CFG as one batch of 2" in text) == p.cfg_batched
    assert ("One expert at a time" in text) == (p.experts_resident == "one" and "Both experts" not in text)
    return checked


# Every machine × model × size, with the file formats and CFG pass counts rotating through the rows (the
# full cross product is 3× longer and finds nothing more).
_ROWS = [(hw, spec, size) for hw in MACHINES for spec in (M13, M14, A14, M5, I2V) for size in SIZES[spec.id]]
CASES = [(hw, spec, size, DISKS[i % len(DISKS)], 1 + (i // len(DISKS)) % 2) for i, (hw, spec, size)
         in enumerate(_ROWS)] + [(hw, spec, size, DiskWeights(dit="fp8"), 2) for hw, spec, size in _ROWS[::7]]


@pytest.mark.parametrize("hw, spec, size, disk, passes", CASES)
def test_every_number_in_a_reason_equals_the_plan_field_it_explains(hw, spec, size, disk, passes):
    w, h = size
    p = plan(hw, spec, w, h, spec.frames, disk=disk, cfg_passes=passes)
    assert check_reasons_match(p) >= 5
    q = replan_after_oom(p, hw, spec, w, h, spec.frames, disk=disk, cfg_passes=passes) if not p.blocker else None
    if q is not None:
        check_reasons_match(q)


def test_forced_overrides_are_explained_with_the_forced_values():
    p = plan(Hardware.simulated(16, 64), M14, 832, 480, 81, Overrides(weight_dtype="bf16", blocks_swapped=36))
    assert (p.blocks_swapped, p.weight_dtype) == (36, "bf16")
    assert check_reasons_match(p) >= 5
    assert "36 of 40 blocks swapped (forced by you)" in "\n".join(p.reasons)
