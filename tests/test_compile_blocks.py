"""torch.compile of the blocks: when it is offered, and that block swap and LoRAs do not make it recompile.

The GPU compiler (Triton) is absent here, so the compile tests use torch's "eager" backend: dynamo traces,
guards and caches exactly as with inductor, only the generated code is the original ops. That is what the
recompile count depends on; what compiled kernels gain is measured by bench/gpu_check.sh on a GPU.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wan_app import catalog, compile_blocks, events, planner, tiny, tiny_lora
from wan_app.engine import Engine
from wan_app.errors import UserError
from wan_app.hardware import Hardware
from wan_app.lora import attach
from wan_app.media import read_video
from wan_app.memory import apply_plan
from wan_app.plan_types import Overrides
from wan_app.request import Request
from tests.test_lora import shapes_of
from tests.test_memory import components, make_plan, run, tiny_transformer

CPU = Hardware.simulated(vram_gb=None, ram_gb=24.0)
GPU = Hardware.simulated(vram_gb=24.0, ram_gb=64.0)
GPU_NO_TRITON = Hardware.simulated(vram_gb=24.0, ram_gb=64.0, triton=False)
SPEC = catalog.get("wan2.1-t2v-14b")


def plan_for(hw, compile_):
    return planner.plan(hw, SPEC, 832, 480, 81, Overrides(compile=compile_))


# ---- when it is offered --------------------------------------------------------------------------------
def test_compile_asked_on_a_cpu_is_refused_naming_the_setting():
    with pytest.raises(UserError) as err:
        plan_for(CPU, True)
    assert err.value.field == "compile" and "NVIDIA GPU" in str(err.value)


def test_compile_asked_without_triton_is_refused_and_says_what_to_install():
    with pytest.raises(UserError) as err:
        plan_for(GPU_NO_TRITON, True)
    assert err.value.field == "compile" and "pip install triton" in str(err.value)


def test_compile_on_a_gpu_with_triton_is_planned_and_the_reason_says_so():
    p = plan_for(GPU, True)
    assert p.compiled and "compile" in p.forced
    assert any(r.startswith("Transformer blocks compiled with torch.compile (forced by you)") for r in p.reasons)


def test_compile_is_off_unless_asked_and_the_gpu_plan_says_how_to_turn_it_on():
    auto, off = plan_for(GPU, None), plan_for(GPU, False)
    assert not auto.compiled and not off.compiled
    assert any("torch.compile off: not measured on a GPU yet" in r for r in auto.reasons)
    assert any(r == "torch.compile off (forced by you)" for r in off.reasons)
    assert not any("compile" in r for r in plan_for(CPU, None).reasons)     # nothing to offer on a CPU
    assert any("Triton is not installed" in r for r in plan_for(GPU_NO_TRITON, None).reasons)


def test_compile_must_be_on_or_off():
    with pytest.raises(UserError) as err:
        planner.validate_overrides(GPU, SPEC, Overrides(compile="yes"))
    assert err.value.field == "compile"


def test_the_cli_refuses_compile_on_this_cpu_before_loading_anything(tiny_root, tmp_path, capsys):
    from wan_app.cli import main
    rc = main(["generate", "--models-dir", str(tiny_root["diffusers-t2v"].path), "--outputs-dir", str(tmp_path),
               "--model", tiny.T21, "--prompt", "x", "--frames", "9", "--size", "64x64", "--steps", "2",
               "--compile", "on"])
    err = capsys.readouterr().err
    assert rc != 0 and "compile" in err and "NVIDIA GPU" in err
    assert not list(tmp_path.glob("*.mp4"))


# ---- what compiles ---------------------------------------------------------------------------------------
@pytest.fixture
def eager_compiler(monkeypatch):
    """torch's eager backend behind the app's counting one; a fresh dynamo cache for each test."""
    monkeypatch.setattr(compile_blocks, "BACKEND", "eager")
    monkeypatch.setattr(compile_blocks, "_warm", set())
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _graphs_per_forward(model, forwards: int = 3) -> tuple[list[int], list[torch.Tensor]]:
    counts, outs = [], []
    for _ in range(forwards):
        before = compile_blocks.graphs_compiled()
        outs.append(run(model))
        counts.append(compile_blocks.graphs_compiled() - before)
    return counts, outs


def test_compiled_blocks_with_swap_and_a_lora_compile_once_and_never_again(eager_compiler, tmp_path):
    model = tiny_transformer()
    lora = tiny_lora.make(shapes_of(model), seed=3)
    from wan_app.lora import load_lora
    path = tmp_path / "lora.safetensors"
    tiny_lora.write(lora, "comfyui", path)
    attach(model, [(load_lora(path, model), 0.8)], dtype=torch.float32)
    reference = run(model)
    placement = apply_plan(make_plan(blocks_swapped=2, compiled=True), components(model), notify=lambda m: None)
    placement.activate("only")
    assert compile_blocks.is_compiled(model)
    counts, outs = _graphs_per_forward(model)
    # one graph for all four blocks, swapped or not: the swap hooks stay outside it
    assert counts == [1, 0, 0]
    assert all(torch.equal(o, reference) for o in outs)
    assert placement._prepared["only"].swapper.transfers == 3 * 2
    placement.release()
    assert not compile_blocks.is_compiled(model)


def test_diffusers_regional_compile_traces_the_swap_hooks_and_compiles_again_on_the_second_forward(
        eager_compiler):
    """Why wan_app.compile_blocks compiles `forward` and not `_call_impl` (compile_repeated_blocks)."""
    model = tiny_transformer()
    placement = apply_plan(make_plan(blocks_swapped=2), components(model), notify=lambda m: None)
    placement.activate("only")
    graphs = []
    model.compile_repeated_blocks(backend=lambda gm, ex: graphs.append(1) or gm.forward, fullgraph=False)
    counts = []
    for _ in range(3):
        before = len(graphs)
        run(model)
        counts.append(len(graphs) - before)
    assert counts[0] > 1 and counts[1] > 0
    for b in model.blocks:
        b._compiled_call_impl = None
    placement.release()


def test_a14b_experts_share_one_compiled_graph(eager_compiler):
    high, low = tiny_transformer(seed=0), tiny_transformer(seed=1)
    placement = apply_plan(make_plan(compiled=True), components(high, low, experts=2), notify=lambda m: None)
    placement.activate("high")
    assert _graphs_per_forward(high, 2)[0] == [1, 0]
    placement.activate("low")
    assert _graphs_per_forward(low, 2)[0] == [0, 0]
    placement.release()


# ---- what a run shows ---------------------------------------------------------------------------------------
def test_a_compiled_run_shows_one_compile_phase_leaves_it_out_of_the_eta_and_equals_an_uncompiled_run(
        eager_compiler, tiny_root, tmp_path, monkeypatch):
    # this CPU cannot plan compile; let the planner believe it can, the rest runs as on a GPU
    monkeypatch.setattr(planner, "unavailable_reason", lambda kind, triton: None)
    engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path, hardware=CPU)
    req = dict(model=tiny.T21, prompt="a fox", frames=9, width=64, height=64, steps=4, seed=3)
    plain = list(engine.run(Request(**req)))
    engine.overrides = Overrides(compile=True)
    evs = list(engine.run(Request(**req)))
    done = evs[-1]
    assert isinstance(done, events.Finished), done
    assert done.metadata["plan"]["compiled"] is True
    assert json.loads(done.path.with_suffix(".json").read_text())["plan"]["compiled"] is True
    progress = [e for e in evs if isinstance(e, events.Progress) and e.phase in ("compile", "sample")]
    assert [(e.phase, e.step) for e in progress] == [("compile", 0), ("sample", 1), ("sample", 2), ("sample", 3),
                                                      ("sample", 4)]
    etas = [e.eta_s for e in progress[1:]]
    assert etas[0] is None and all(e is not None for e in etas[1:])     # step 1 compiled: no speed from it
    assert not [e for e in evs if isinstance(e, events.Notice) and "more graph" in e.message]
    assert np.array_equal(read_video(done.path), read_video(plain[-1].path))
    # a second run at the same size compiles nothing: no compile phase
    again = list(engine.run(Request(**{**req, "seed": 4})))
    assert isinstance(again[-1], events.Finished)
    assert not [e for e in again if isinstance(e, events.Progress) and e.phase == "compile"]


def test_fp8_and_gguf_weights_compile_once_each_with_their_own_compile_phase(eager_compiler, tiny_root, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr(planner, "unavailable_reason", lambda kind, triton: None)
    for name in ("comfyui-fp8-scaled", "comfyui-gguf-q8_0", "comfyui-gguf-q4_k"):
        info = tiny_root[name]
        engine = Engine([info.path], tmp_path / name, hardware=CPU, overrides=Overrides(compile=True))
        before = compile_blocks.graphs_compiled()
        evs = list(engine.run(Request(model=info.model_id, prompt="a fox", frames=9, width=64, height=64, steps=3,
                                      seed=3)))
        assert isinstance(evs[-1], events.Finished), (name, evs[-1])
        assert evs[-1].metadata["plan"]["weight_dtype"] == ("fp8" if "fp8" in name else "gguf")
        assert compile_blocks.graphs_compiled() - before == 1, name          # these layers, this size: once
        assert sum(isinstance(e, events.Progress) and e.phase == "compile" for e in evs) == 1, name
        assert not [e for e in evs if isinstance(e, events.Notice) and "more graph" in e.message], name


def test_a_compiled_magcache_run_skips_the_same_forwards_and_makes_the_same_video(eager_compiler, tiny_root,
                                                                                 tmp_path, monkeypatch):
    monkeypatch.setattr(planner, "unavailable_reason", lambda kind, triton: None)
    req = dict(model=tiny.T21, prompt="a fox", frames=9, width=64, height=64, steps=20, seed=1, cache="magcache")
    root = tiny_root["diffusers-t2v"].path
    plain = list(Engine([root], tmp_path / "plain", hardware=CPU).run(Request(**req)))[-1]
    before = compile_blocks.graphs_compiled()
    compiled = list(Engine([root], tmp_path / "compiled", hardware=CPU, overrides=Overrides(compile=True))
                    .run(Request(**req)))[-1]
    assert isinstance(compiled, events.Finished), compiled
    assert compiled.metadata["forwards_skipped"] == plain.metadata["forwards_skipped"] > 0
    assert compile_blocks.graphs_compiled() - before == 1
    assert np.array_equal(read_video(compiled.path), read_video(plain.path))
