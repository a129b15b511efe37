"""LoRAs through the whole run: CLI flag → plan (bytes counted) → attach on every weight path → video
whose metadata names each LoRA; strength 0 changes nothing; a LoRA for another base is refused before
anything loads. (wan_app.lora's own tests check the math against merged weights and diffusers.)"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from wan_app import events, tiny_lora
from wan_app.cli import main
from wan_app.engine import Engine
from wan_app.hardware import Hardware
from wan_app.media import read_video
from wan_app.request import Request

CPU = Hardware.simulated(vram_gb=None, ram_gb=24.0)


@pytest.fixture(scope="module")
def lora_models(tiny_root, tmp_path_factory):
    """Copies of three tiny layouts, each with a loras/ folder of tiny LoRAs in every key layout."""
    root = tmp_path_factory.mktemp("lora_models")
    out = {}
    for name in ("diffusers-t2v", "comfyui-fp8-scaled", "diffusers-a14b"):
        dst = root / name
        shutil.copytree(tiny_root[name].path, dst)
        files = tiny_lora.write_all(dst)
        tiny_lora.foreign(dst / "loras" / "wan21_1.3b_style.safetensors", 1536, 8960)
        out[name] = (dst, tiny_root[name].model_id, files)
    return out


def _run(engine, **kw):
    base = dict(prompt="a red kite", frames=9, width=64, height=64, steps=2, seed=4)
    base.update(kw)
    evs = list(engine.run(Request(**base)))
    return evs, evs[-1]


@pytest.mark.parametrize("layout", ["diffusers-t2v", "comfyui-fp8-scaled"])
def test_a_lora_changes_the_video_strength_zero_changes_nothing_and_metadata_names_it(lora_models, tmp_path,
                                                                                      layout):
    path, model, files = lora_models[layout]
    engine = Engine([path], tmp_path, hardware=CPU)
    _, plain = _run(engine, model=model)
    _, zero = _run(engine, model=model, loras=[{"file": files["comfyui"].name, "strength": 0.0}])
    evs, styled = _run(engine, model=model, loras=[{"file": files["kohya"].name, "strength": 0.8},
                                                   {"file": str(files["diffusers"]), "strength": -0.5}])
    assert all(isinstance(e, events.Finished) for e in (plain, zero, styled)), (plain, zero, styled)
    a, b, c = (read_video(e.path) for e in (plain, zero, styled))
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1
    meta = json.loads(styled.path.with_suffix(".json").read_text())
    assert [e["strength"] for e in meta["loras"]] == [0.8, -0.5]
    assert all(len(f["sha256_header"]) == 64 for e in meta["loras"] for f in e["files"])
    assert meta["request"]["loras"][0]["file"] == files["kohya"].name
    plan = next(e for e in evs if isinstance(e, events.PlanReady)).plan
    assert any(r.startswith("LoRAs:") for r in plan.reasons)


def test_a14b_pair_gets_its_own_strength_per_expert_and_runs_with_one_expert_at_a_time(lora_models, tmp_path):
    from wan_app.plan_types import Overrides
    path, model, files = lora_models["diffusers-a14b"]
    high, low = files["a14b-high"].name, files["a14b-low"].name
    engine = Engine([path], tmp_path, hardware=CPU, overrides=Overrides(experts_resident="one"))
    evs, done = _run(engine, model=model, frames=5, steps=10,
                     loras=[{"file": high, "strength": 1.0, "strength_low": 0.5}])   # the pair, as one item
    assert isinstance(done, events.Finished), done
    applied = [(f["expert"], f["file"], f["strength"]) for e in done.metadata["loras"] for f in e["files"]]
    assert sorted(applied) == [("high", high, 1.0), ("low", low, 0.5)]
    assert [e.to_expert for e in evs if isinstance(e, events.ExpertSwitch)] == ["low"]


def test_a_lora_for_another_base_is_refused_before_loading_naming_both_shapes(lora_models, tmp_path, capsys):
    path, model, _ = lora_models["diffusers-t2v"]
    out = tmp_path / "never.mp4"
    code = main(["generate", "--models-dir", str(path), "--model", model, "--prompt", "x", "--frames", "9",
                 "--size", "64x64", "--steps", "2", "--lora", "wan21_1.3b_style.safetensors:0.7", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "1536" in err and not out.exists()


@pytest.mark.parametrize("arg, field", [("x.safetensors:9", "strength"), ("x.safetensors:abc", "strength"),
                                         ("missing.safetensors", "lora")])
def test_bad_lora_arguments_name_the_field(lora_models, tmp_path, capsys, arg, field):
    path, model, _ = lora_models["diffusers-t2v"]
    code = main(["generate", "--models-dir", str(path), "--model", model, "--prompt", "x", "--frames", "9",
                 "--size", "64x64", "--lora", arg, "--out", str(tmp_path / "n.mp4")])
    assert code == 2 and field in capsys.readouterr().err


def test_a_preset_whose_lora_is_not_installed_names_the_file_and_where_it_goes(tmp_path, capsys):
    code = main(["generate", "--models-dir", str(tmp_path), "--model", "wan2.2-t2v-a14b", "--prompt", "x",
                 "--preset", "Lightning 4 steps", "--out", str(tmp_path / "n.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "preset" in err and "high_noise_model.safetensors" in err and "loras" in err


def test_lcm_solver_of_the_lightx2v_distills_runs_and_is_reproducible(lora_models, tmp_path):
    path, model, _ = lora_models["diffusers-t2v"]
    engine = Engine([path], tmp_path, hardware=CPU)
    runs = [_run(engine, model=model, solver="lcm", steps=4, guidance=1.0)[1] for _ in range(2)]
    assert all(isinstance(e, events.Finished) for e in runs)
    assert np.array_equal(read_video(runs[0].path), read_video(runs[1].path))
    assert runs[0].metadata["forwards"] == 4
