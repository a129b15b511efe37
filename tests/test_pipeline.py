"""The one job pipeline's promises: the plan read is the plan run, CFG 1 is one forward a step, prompts are
cleaned as the official code does, and overrides that cannot work are refused when they are set."""
from __future__ import annotations

import json

import pytest
import torch

from wan_app import events
from wan_app.cli import main
from wan_app.engine import Engine
from wan_app.hardware import Hardware
from wan_app.media import probe, read_metadata
from wan_app.request import Request
from tests.conftest import image_args
from tests.support import clip, load

CPU = Hardware.simulated(vram_gb=None, ram_gb=24.0)


def count_forwards(engine):
    """Transformer forwards, counted by a hook the host's models get when they load; a batch of 2
    counts as two."""
    seen = {"n": 0, "negative": 0}
    real_load, real_encode = engine.host.load, engine.host.encode

    def hook(module, args, kwargs):
        seen["n"] += kwargs["hidden_states"].shape[0]

    def load_and_count(*a):
        real_load(*a)
        for m in (engine.host.components.transformer, engine.host.components.transformer_2):
            if m is not None and not getattr(m, "_counted", False):
                m.register_forward_pre_hook(hook, with_kwargs=True)
                m._counted = True

    def encode(prompt, negative):
        seen["negative"] += negative is not None
        return real_encode(prompt, negative)
    engine.host.load, engine.host.encode = load_and_count, encode
    return seen


@pytest.mark.parametrize("cfg, per_step", [(1.0, 1), (5.0, 2)])
def test_cfg_1_makes_one_transformer_forward_per_step_and_cfg_5_two(tiny_root, tmp_path, cfg, per_step):
    engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path, hardware=CPU)
    seen = count_forwards(engine)
    evs = list(engine.run(Request(model="tiny-wan2.1-t2v", prompt="a fox", frames=9, width=64, height=64,
                                  steps=4, seed=3, guidance=cfg)))
    done = [e for e in evs if isinstance(e, events.Finished)]
    assert done, evs[-1]
    assert seen["n"] == 4 * per_step
    meta = json.loads(done[0].path.with_suffix(".json").read_text())
    assert meta["forwards"] == 4 * per_step and meta["forwards_skipped"] == 0
    assert meta["plan"]["cfg_passes"] == per_step
    # at CFG 1 the negative prompt is never encoded, and the plan says why
    assert seen["negative"] == (0 if cfg == 1.0 else 1)
    plan = next(e for e in evs if isinstance(e, events.PlanReady)).plan
    assert any("CFG 1: one forward per step" in r for r in plan.reasons) == (cfg == 1.0)


def test_a14b_with_cfg_1_on_one_expert_only_skips_that_experts_uncond(tiny_root, tmp_path):
    """Lightning-style runs set each expert's CFG on its own: 7 high-noise steps at CFG 1 (one forward),
    3 low-noise steps at CFG 3 (two)."""
    engine = Engine([tiny_root["diffusers-a14b"].path], tmp_path, hardware=CPU)
    seen = count_forwards(engine)
    evs = list(engine.run(Request(model="tiny-wan2.2-t2v-a14b", prompt="rain", frames=5, width=64, height=64,
                                  steps=10, seed=3, guidance=1.0, guidance_2=3.0)))
    done = [e for e in evs if isinstance(e, events.Finished)]
    assert done and seen["n"] == 7 * 1 + 3 * 2 == done[0].metadata["forwards"]


def test_plan_json_equals_the_plan_in_the_videos_sidecar_for_every_tiny_layout(tiny_root, tmp_path, capsys,
                                                                              test_images):
    """Every layout through the CLI's main() (the code path of `python app.py generate`; one real subprocess
    in tests/test_engine.py checks the entry point): the mp4 and its metadata, and its plan = `plan --json`."""
    assert len(tiny_root) >= 10
    for name, info in tiny_root.items():
        common = ["--models-dir", str(info.path), "--model", info.model_id, "--frames", "9", "--size", "64x64",
                  "--steps", "3", *image_args(info.model_id, test_images)]
        assert main(["plan", *common, "--json"]) == 0, name
        planned = json.loads(capsys.readouterr().out)
        out = tmp_path / f"{name}.mp4"
        assert main(["generate", *common, "--prompt", "a red ball rolls", "--seed", "7", "--out", str(out),
                     "--quiet"]) == 0, name
        capsys.readouterr()
        vi = probe(out)
        assert (vi.frames, vi.width, vi.height) == (9, 64, 64), name
        meta = read_metadata(out)
        assert meta["model"] == info.model_id
        assert meta["request"]["seed"] == 7 and meta["request"]["prompt"] == "a red ball rolls"
        assert meta["frames"] == 9 and len(meta["timesteps"]) == 3
        assert json.loads((out.with_suffix(".json")).read_text())["model"] == info.model_id
        ran = meta["plan"]
        assert planned == ran, (name, {k: (planned[k], ran.get(k)) for k in planned if planned[k] != ran.get(k)})


def test_html_entities_and_whitespace_give_the_same_embeddings_as_the_clean_prompt(tiny_root, tmp_path):
    engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path, hardware=CPU)
    host = load(engine, clip(engine, Request(model="tiny-wan2.1-t2v", prompt="x", frames=9, width=64, height=64),
                             tmp_path / "x.mp4"))
    a, _ = host.encode("a cat &amp;amp; a dog", None)
    b, _ = host.encode("a cat &  a\n dog ", None)
    c, _ = host.encode("a cat and a dog", None)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_an_override_that_cannot_work_here_is_refused_when_set_naming_the_field(tiny_root, tmp_path, capsys):
    info = tiny_root["diffusers-t2v"]
    common = ["--models-dir", str(info.path), "--model", info.model_id, "--frames", "9", "--size", "64x64"]
    out = tmp_path / "never.mp4"
    # a CPU has no GPU memory to swap out of; the tiny model has 2 blocks
    for flag, value in (("--blocks-swapped", "1"), ("--blocks-swapped", "10")):
        code = main(["generate", *common, "--prompt", "x", "--out", str(out), flag, value])
        err = capsys.readouterr().err
        assert code == 2 and "blocks_swapped" in err and not out.exists()
        assert main(["plan", *common, flag, value]) == 2
        assert "blocks_swapped" in capsys.readouterr().err


def test_plan_that_cannot_run_exits_non_zero_with_the_blocker_last(capsys, tmp_path):
    code = main(["plan", "--models-dir", str(tmp_path), "--model", "wan2.1-t2v-14b", "--vram", "6", "--ram", "8"])
    out = capsys.readouterr()
    assert code == 2
    last = out.err.strip().splitlines()
    assert last[-2].startswith("error: ") and last[-1].strip().startswith("fix: ")


def test_nan_weights_give_a_failed_run_not_a_black_video(tiny_root, tmp_path):
    engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path / "out", hardware=CPU)

    def poison(step, expert):
        if step == 0:
            for p in engine.host.components.transformer.parameters():
                p.data.fill_(float("nan"))
    engine.step_hooks.append(poison)
    evs = list(engine.run(Request(model="tiny-wan2.1-t2v", prompt="x", frames=9, width=64, height=64, steps=2,
                                  seed=1)))
    assert isinstance(evs[-1], events.Failed) and "NaN" in evs[-1].message and evs[-1].hint
    assert not list((tmp_path / "out").rglob("*.mp4"))


def test_stop_pressed_during_the_decode_writes_nothing(tiny_root, tmp_path):
    import threading
    engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path / "out", hardware=CPU)
    cancel = threading.Event()
    evs = []
    for ev in engine.run(Request(model="tiny-wan2.1-t2v", prompt="x", frames=9, width=64, height=64, steps=2,
                                 seed=1), cancel=cancel):
        evs.append(ev)
        if isinstance(ev, events.Progress) and ev.phase == "decode":
            cancel.set()
    assert isinstance(evs[-1], events.Cancelled)
    assert not list((tmp_path / "out").rglob("*.mp4"))


def test_a_magcache_run_records_the_forwards_it_skipped_and_threshold_zero_changes_nothing(tiny_root, tmp_path):
    from wan_app.media import read_video
    engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path, hardware=CPU)
    seen = count_forwards(engine)
    base = dict(model="tiny-wan2.1-t2v", prompt="a fox", frames=9, width=64, height=64, steps=20, seed=1)
    runs = {}
    for name, kw in (("off", {}), ("zero", dict(cache="magcache", cache_threshold=0.0)),
                     ("mag", dict(cache="magcache"))):
        seen["n"] = 0
        evs = list(engine.run(Request(**base, **kw)))
        done = evs[-1]
        assert isinstance(done, events.Finished), done
        runs[name] = (done, seen["n"])
    off, zero, mag = (runs[k][0] for k in ("off", "zero", "mag"))
    import numpy as np
    assert np.array_equal(read_video(off.path), read_video(zero.path))
    m = mag.metadata
    assert m["cache"]["kind"] == "magcache" and m["forwards_skipped"] > 0
    assert m["forwards"] + m["forwards_skipped"] == 40 == off.metadata["forwards"]
    assert f"skips {m['forwards_skipped']} of 40" in m["plan"]["step_cache"]
    assert zero.metadata["forwards_skipped"] == 0


def test_a_videos_metadata_names_files_but_never_where_they_are(tiny_root, tmp_path):
    root = tiny_root["comfyui-fp16"].path
    engine = Engine([root], tmp_path, hardware=CPU)
    evs = list(engine.run(Request(model="tiny-wan2.1-t2v", prompt="x", frames=9, width=64, height=64, steps=2,
                                  seed=1)))
    done = evs[-1]
    assert isinstance(done, events.Finished), done
    text = done.path.with_suffix(".json").read_text()
    assert str(root) not in text and str(tmp_path) not in text
    assert json.loads(text)["files"]["transformer"]["path"].endswith(".safetensors")


@pytest.mark.serial
def test_a_long_jobs_eta_counts_the_time_each_later_window_spends_outside_its_steps(tiny_root, tmp_path,
                                                                                  monkeypatch):
    """A window also encodes, decodes and appends (here appending is made slow, as a slow disk would):
    after one window the ETA counts that for every window to come, within 20% of the time really left at
    the last step of the second window (counting the steps and decodes alone falls short by a third)."""
    import time
    from wan_app import pipeline
    from wan_app.longvideo import LongRequest
    real_append = pipeline.LongSink.append

    def slow_append(self, *args, **kw):
        time.sleep(1.0)
        return real_append(self, *args, **kw)
    monkeypatch.setattr(pipeline.LongSink, "append", slow_append)
    engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path, hardware=CPU)
    engine.step_hooks.append(lambda step, expert: time.sleep(0.1))
    job = LongRequest(base=Request(model="tiny-wan2.1-t2v", prompt="a boat drifts", width=64, height=64, steps=2,
                                   seed=4), total_frames=21, window=9)
    at_window_2 = None
    for ev in engine.run(job):
        if isinstance(ev, events.Progress) and ev.phase == "sample" and ev.window == 1 and ev.step == ev.total:
            at_window_2 = (time.monotonic(), ev.eta_s, ev.windows)
        last = ev
    assert isinstance(last, events.Finished), last
    t, eta, windows = at_window_2
    assert windows >= 4
    actual = time.monotonic() - t
    assert abs(eta - actual) <= 0.2 * actual, f"ETA {eta:.1f}s at the end of window 2 of {windows}; {actual:.1f}s left"
