"""Text to Video, Extend and Settings driven in process on the tiny models (no server): what a visit shows
is computed on that visit (saved settings, outputs made since the start), overrides are checked when set
and belong to the visit, a Rescan keeps the tab's values, Load settings restores every field of a video
(LoRAs and the step cache too), and a stopped long video is offered for resuming, never as finished."""
from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import gradio as gr
import pytest

from wan_app import catalog, events, tiny_lora
from wan_app.engine import Engine
from wan_app.errors import UserError
from wan_app.hardware import Hardware
from wan_app.longvideo import LongRequest
from wan_app.plan_types import Overrides
from wan_app.request import Request
from wan_app.settings import Settings

from ui import common
from ui.cache_setting import kinds_for
from ui.extend_tab import ExtendTab
from ui.generation_controls import problem_at
from ui.runs import Page
from ui.settings_tab import SettingsTab, attention_choices
from ui.t2v_tab import T2VTab

T21, A14 = "tiny-wan2.1-t2v", "tiny-wan2.2-t2v-a14b"
PAIR = "tiny_wan2.2_a14b_high+low_noise_lora"
LOCAL = SimpleNamespace(client=SimpleNamespace(host="127.0.0.1"), session_hash="visit-1")


@pytest.fixture(scope="module")
def studio(tiny_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("ui_tabs")
    tiny_lora.write_all(work / "models")
    engine = Engine([work / "models", tiny_root["diffusers-t2v"].path, tiny_root["diffusers-a14b"].path],
                    work / "outputs")
    settings_path = work / "settings.json"
    ctx = common.AppContext(engine=engine, settings=Settings(), settings_path=settings_path)
    with gr.Blocks() as demo:
        page = Page(ctx)
        t2v = T2VTab(ctx, page)
        ext = ExtendTab(ctx, page, t2v)
        st = SettingsTab(ctx, page, t2v)
        page.wire()
    return SimpleNamespace(demo=demo, ctx=ctx, page=page, t2v=t2v, ext=ext, st=st, engine=engine, work=work,
                           settings_path=settings_path)


def upd(out: dict, comp, key: str = "value"):
    v = out[comp]
    return v.get(key) if isinstance(v, dict) else v


def values(tab, **kw) -> dict:
    v = dict(model=T21, prompt="a fox", negative="", size="64x64", frames=9, steps=2, shift=5.0, cfg=5.0, cfg2=3.0,
             boundary=0.875, solver="unipc", seed_mode="fixed", seed=1, cache="off", cache_threshold="", preset="",
             **{f"lora{i}": "" for i in range(3)}, **{f"lora{i}_strength": 1.0 for i in range(3)},
             **{f"lora{i}_low": 1.0 for i in range(3)})
    v.update(kw)
    assert set(v) == set(tab.inputs()), set(v) ^ set(tab.inputs())
    return v


def finished(stream) -> events.Finished:
    evs = list(stream)
    done = [e for e in evs if isinstance(e, events.Finished)]
    assert done, evs[-1]
    return done[0]


def write_settings(studio, **fields) -> None:
    studio.settings_path.write_text(json.dumps({**Settings().to_dict(), **fields}))


# ---------------------------------------------------------------------------------------------- settings
def test_an_override_applies_to_this_visit_only_and_never_to_the_engine(studio):
    st, page = studio.st, studio.page
    before = studio.engine.overrides
    out = st.apply_overrides(-1, "auto", "auto", "on", "auto", "auto", "auto", T21, "64x64", 9, {})
    assert out[page.overrides] == Overrides(vae_tiling=True).to_dict()
    assert "Applies to your runs in this tab" in out[st.override_msg]
    assert studio.engine.overrides == before == Overrides(), "a visit's choice became every session's default"


@pytest.mark.parametrize("control,value,label", [(0, 5, "Blocks swapped to CPU"), (4, "gpu", "Text encoder runs on"),
                                                 (6, "on", "Compile the transformer")])
def test_an_override_that_cannot_work_here_is_refused_naming_its_field(studio, control, value, label):
    """On this CPU machine nothing can be swapped, umT5 has no GPU and torch.compile has no compiler: the
    controls go back to what applies, the visit's overrides stay as they were, and the message names the
    field."""
    st, page = studio.st, studio.page
    chosen = [-1, "auto", "auto", "auto", "auto", "auto", "auto"]
    chosen[control] = value
    out = st.apply_overrides(*chosen, T21, "64x64", 9, {"vae_tiling": False})
    assert page.overrides not in out
    assert label in out[st.override_msg] and "not applied" in out[st.override_msg]
    assert out[st.tiling] == "off" and out[st.blocks] == -1


def test_compile_is_auto_on_or_off_and_saved_and_loaded_like_the_other_overrides(studio):
    st, page = studio.st, studio.page
    assert st.overrides_from(-1, "auto", "auto", "auto", "auto", "auto", "auto").compile is None
    assert st.overrides_from(-1, "auto", "auto", "auto", "auto", "auto", "on").compile is True
    assert st.control_values(Overrides(compile=False))[st.compile] == "off"
    assert "on" not in [c[1] if isinstance(c, tuple) else c for c in st.compile.choices], \
        "compile offered on a machine without CUDA and Triton"
    out = st.apply_overrides(-1, "auto", "auto", "auto", "auto", "auto", "off", T21, "64x64", 9, {})
    assert out[page.overrides] == {"compile": False}
    models = "\n".join(str(d) for d in studio.engine.models_dirs)
    try:
        msg = st.save(-1, "auto", "auto", "auto", "auto", "auto", models, "outputs", "", "on", LOCAL)[st.save_msg]
        assert "Compile the transformer" in msg and not studio.settings_path.exists(), msg
        saved = st.save(-1, "auto", "auto", "auto", "auto", "auto", models, "outputs", "", "off", LOCAL)
        assert "Saved" in saved[st.save_msg] and saved[page.overrides] == {"compile": False}
        assert json.loads(studio.settings_path.read_text())["overrides"] == {"compile": False}
        out = st.on_load(LOCAL, T21)
        assert out[st.compile] == "off" and out[page.overrides] == {"compile": False}
        write_settings(studio, overrides={"compile": True})             # saved on a GPU machine, say
        out = st.on_load(LOCAL, T21)
        assert out[st.compile] == "auto" and "Compile the transformer" in out[st.override_msg]
    finally:
        studio.settings_path.unlink(missing_ok=True)


def test_the_blocks_slider_ends_at_the_chosen_models_layer_count(studio):
    for model in (T21, A14):
        spec = catalog.get(model)
        assert upd({0: studio.st.blocks_range(spec, Overrides())}, 0, "maximum") == spec.arch.num_layers


def test_only_the_attention_kernels_that_ran_here_are_offered():
    assert attention_choices(Hardware.simulated(None, 16)) == ["auto", "sdpa", "native"]
    ran = SimpleNamespace(attention=["sage", "sdpa"])
    assert attention_choices(ran) == ["auto", "sage", "sdpa", "native"]


def test_a_run_refused_because_of_a_setting_says_so_at_the_model():
    name, msg = problem_at(UserError("blocks_swapped", "no GPU to swap to", "set it to auto"), {}, "prompt")
    assert name == "model" and msg.startswith("Settings → Blocks swapped to CPU: no GPU to swap to")


def test_a_visit_shows_the_settings_saved_now_not_those_at_start(studio):
    st, page = studio.st, studio.page
    write_settings(studio, overrides={"vae_tiling": True}, default_model=A14)
    try:
        out = st.on_load(LOCAL, T21)
        assert out[st.tiling] == "on" and out[page.overrides] == Overrides(vae_tiling=True).to_dict()
        assert out[st.default_model] == A14
        write_settings(studio, overrides={"blocks_swapped": 5})       # saved on a GPU machine, say
        out = st.on_load(LOCAL, T21)
        assert out[st.blocks] == {"__type__": "update", "maximum": catalog.get(T21).arch.num_layers, "value": -1}
        assert "Blocks swapped to CPU" in out[st.override_msg] and out[page.overrides] == Overrides().to_dict()
    finally:
        studio.settings_path.unlink()


# ---------------------------------------------------------------------------------------------- text to video
def test_a_visit_lists_the_outputs_made_since_the_server_started(studio):
    t2v = studio.t2v
    before = t2v.on_load({}, {})[t2v.gallery_paths]
    done = finished(studio.engine.run(t2v.build_request(values(t2v, prompt="made after the start"))))
    after = t2v.on_load({}, {})[t2v.gallery_paths]
    assert str(done.path) in after and str(done.path) not in before


def test_rescan_keeps_every_value_of_the_tab_while_its_model_is_ready(studio):
    t2v = studio.t2v
    out = t2v.rescan(A14, {})
    assert upd(out, t2v.model) == A14
    touched = set(out) & set(t2v.model_outputs())
    assert not touched, f"a rescan reset {[getattr(c, 'label', c) for c in touched]}"


def test_load_settings_restores_every_field_of_a_video_made_with_another_model(studio):
    """Every field differs from the model's defaults, LoRA strengths and the step cache included; the
    tab shows another model when the video's settings are loaded."""
    t2v = studio.t2v
    spec = catalog.get(A14)
    assert "magcache" in kinds_for(spec)
    made = dict(model=A14, prompt="a heron lands on a lake", negative="blurry, text", size="96x64", frames=5,
                steps=3, shift=7.5, cfg=2.5, cfg2=1.5, boundary=0.9, solver="euler", seed=4242, cache="magcache",
                cache_threshold="0.05", lora0=PAIR, lora0_strength=0.7, lora0_low=-0.5)
    done = finished(studio.engine.run(t2v.build_request(values(t2v, **made))))
    t2v.on_model(T21, {})                                  # the page shows the other model meanwhile
    out = t2v.load_from_video(str(done.path), {})
    _, lora, high, low = t2v.loras.slots[0]
    got = dict(model=upd(out, t2v.model), prompt=out[t2v.prompt], negative=out[t2v.negative],
               size=upd(out, t2v.size), frames=upd(out, t2v.frames), steps=out[t2v.steps], shift=out[t2v.shift],
               cfg=upd(out, t2v.cfg), cfg2=upd(out, t2v.cfg2), boundary=upd(out, t2v.boundary),
               solver=out[t2v.solver], seed=out[t2v.seed], cache=upd(out, t2v.cache.kind),
               cache_threshold=upd(out, t2v.cache.threshold), lora0=upd(out, lora), lora0_strength=upd(out, high),
               lora0_low=upd(out, low))
    assert got == made
    assert out[t2v.seed_mode] == "fixed" and upd(out, t2v.cfg2, "visible") is True
    assert set(t2v.restore_outputs()) >= set(out), "load_from_video updates a control its event does not list"
    assert "Loaded the settings" in out[t2v.load_msg]


def test_load_settings_reads_only_the_apps_own_videos(studio, tmp_path):
    stranger = tmp_path / "2024-01-01" / "x.mp4"
    stranger.parent.mkdir()
    stranger.write_bytes(b"\0\0\0\x18ftypisom")
    for path in ("/etc/passwd", str(stranger), ""):
        out = studio.t2v.load_from_video(path, {})
        assert set(out) == {studio.t2v.load_msg} and "Choose one of your outputs" in out[studio.t2v.load_msg]


# ---------------------------------------------------------------------------------------------- extend
def test_a_stopped_long_video_stops_within_a_step_is_resumable_and_never_a_finished_output(studio):
    ext, t2v = studio.ext, studio.t2v
    api = {fn.api_name for fn in studio.demo.fns.values()}
    assert "unfinished_jobs" in api, "the unfinished jobs' Refresh button is not wired"
    cancel, steps = threading.Event(), []

    def stop_in_the_second_window(step, expert):
        steps.append(step)
        if len(steps) == 3:                              # 2 steps a window: window 2 has begun
            cancel.set()

    studio.engine.step_hooks.append(stop_in_the_second_window)
    try:
        job = LongRequest(base=Request(model=T21, prompt="a boat drifts", width=64, height=64, steps=2, seed=3),
                          total_frames=25)
        evs = list(studio.engine.run(job, cancel=cancel))
    finally:
        studio.engine.step_hooks.remove(stop_in_the_second_window)
    (stopped,) = [e for e in evs if isinstance(e, events.Cancelled)]
    assert len(steps) == 3, f"{len(steps) - 3} more step(s) ran after Stop: a stop takes effect within one step"
    assert stopped.path is not None and stopped.path.exists()
    lists = ext.refresh_lists()
    assert str(stopped.path) in [p for _, p in upd(lists, ext.jobs, "choices")]
    assert upd(lists, ext.resume_btn, "interactive") is True
    assert str(stopped.path) not in [p for p, _ in t2v.gallery_items()], "the gallery shows an unfinished video"
    visit = ext.on_load({})
    assert str(stopped.path) in [p for _, p in upd(visit, ext.jobs, "choices")], "a visit does not list it"


def test_a_long_jobs_eta_covers_every_window_not_just_the_current_one(studio):
    """At the last step of the first window the line still counts the windows to come (at least their
    denoising steps): an ETA of one window would be about zero there."""
    import re
    import time
    ext = studio.ext
    delay = lambda step, expert: time.sleep(0.25)  # noqa: E731 - steps long enough to time
    studio.engine.step_hooks.append(delay)
    try:
        job = LongRequest(base=Request(model=T21, prompt="a boat drifts", width=64, height=64, steps=2, seed=4),
                          total_frames=21)
        seen = []
        for out in ext.view.render(studio.engine.run(job, cancel=threading.Event())):
            line = out.get(ext.view.status, "")
            if 'data-phase="sample"' in line:
                m = re.search(r'data-step="(\d+)" data-total="(\d+)" data-window="(\d*)" data-windows="(\d*)" '
                              r'data-eta="(\d*)"', line)
                seen.append((time.monotonic(), *m.groups()))
    finally:
        studio.engine.step_hooks.remove(delay)
    windows = int(seen[-1][4])
    assert windows >= 3, seen[-1]
    t, step, total, window, _, eta = next(s for s in seen if s[3] == "0" and s[1] == s[2])
    assert eta, "no ETA at the end of the first window"
    steps_to_come = (windows - 1) * int(total) * 0.25          # the other windows' denoising alone
    assert int(eta) >= 0.8 * steps_to_come - 0.5, \
        f"ETA {eta}s at the end of window 1 of {windows}: the other windows' steps alone take {steps_to_come:.1f}s"


def test_downloads_and_demo_installs_never_wait_for_the_gpu(studio):
    fns = {fn.api_name: fn for fn in studio.demo.fns.values() if fn.api_name}
    for name in ("install_tiny", "download"):
        assert fns[name].concurrency_id == common.DOWNLOADS, (name, fns[name].concurrency_id)
    assert fns["generate"].concurrency_id == common.GPU and fns["generate"].concurrency_limit == 1


def test_the_frames_note_names_the_limit_the_slider_has(studio):
    import re
    t2v = studio.t2v
    for model in (T21, A14):
        out = t2v.model_values(catalog.get(model), None, Overrides())
        limit = upd(out, t2v.frames, "maximum")
        said = {int(n) for n in re.findall(r"(\d+) frames", out[t2v.frames_note])}
        assert said == {limit}, (model, limit, out[t2v.frames_note])


def test_a_bad_long_video_value_is_named_by_its_label_at_its_field(studio):
    ext = studio.ext
    v = dict(model=T21, prompt="a boat", negative="", size="64x64", total=0, window=0, overlap=0, color=1.0,
             upload=None, from_output=None, seed_mode="random", seed=42, cache="off", cache_threshold="", preset="",
             **{f"lora{i}": "" for i in range(3)}, **{f"lora{i}_strength": 1.0 for i in range(3)},
             **{f"lora{i}_low": 1.0 for i in range(3)})
    assert set(v) == set(ext.inputs())
    problems = ext.check(v)
    assert set(problems) == {"total"} and problems["total"].startswith("Total frames: "), problems
    problems = ext.check({**v, "total": 25, "overlap": 6})
    assert set(problems) == {"overlap"} and problems["overlap"].startswith("Overlap frames: "), problems
    assert ext.check({**v, "total": 25}) == {}


def test_the_tiny_demo_size_the_page_gives_is_what_the_button_writes(studio, tmp_path):
    import re
    from ui import models_panel
    panel = studio.t2v.models
    studio.ctx.engine.models_dirs.insert(0, tmp_path)       # the button writes into the first models folder
    try:
        assert "Tiny demo models written" in panel.install_tiny(progress=lambda *a, **k: None)
    finally:
        studio.ctx.engine.models_dirs.remove(tmp_path)
    written = sum(p.stat().st_size for p in (tmp_path / "tiny-demo").rglob("*") if p.is_file()) / 1e6
    (said,) = [int(n) for n in re.findall(r"about (\d+) MB", models_panel.TINY_NOTE)]
    assert 0.8 * written <= said <= 1.2 * written, f"the page says about {said} MB, the button wrote {written:.0f} MB"
