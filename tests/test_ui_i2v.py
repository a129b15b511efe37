"""The Image to Video tab, the LoRA picker and the step cache setting, driven in process on the tiny models:
the size the image gives (and a chosen size winning), bad images named at their field, only fitting LoRAs
offered (two strengths for A14B), presets filling the fields and naming a missing file beside Generate, the
cache kinds a model has tables for, and "Load settings" restoring all but the image."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from wan_app import catalog, events, tiny_lora
from wan_app.engine import Engine
from wan_app.errors import UserError
from wan_app.lora import presets
from wan_app.request import Request
from wan_app.settings import Settings

from ui import common
from ui.cache_setting import CacheSetting, kinds_for
from ui.i2v_tab import I2VTab
from ui.lora_picker import LoraPicker, default_strengths, fitting_items
from ui.runs import Page

I2V, I2V_A14, FLF = "tiny-wan2.1-i2v", "tiny-wan2.2-i2v-a14b", "tiny-wan2.1-flf2v"
T21, A14 = "tiny-wan2.1-t2v", "tiny-wan2.2-t2v-a14b"
FITS_IMAGE_MODELS = "tiny_wan_diffusers.safetensors"    # no patch-embedding delta, so any input channels
PAIR = "tiny_wan2.2_a14b_high+low_noise_lora"


@pytest.fixture(scope="module")
def studio(tiny_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("ui_i2v")
    tiny_lora.write_all(work / "models")
    dirs = [work / "models", *(tiny_root[n].path for n in ("diffusers-i2v", "diffusers-i2v-a14b", "diffusers-flf2v",
                                                             "diffusers-t2v", "diffusers-a14b"))]
    engine = Engine(dirs, work / "outputs")
    ctx = common.AppContext(engine=engine, settings=Settings())
    with gr.Blocks():
        page = Page(ctx)
        tab = I2VTab(ctx, page)
        page.wire()
    return SimpleNamespace(tab=tab, engine=engine, work=work)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("i2v_ui_images")
    rng = np.random.default_rng(1)
    out = {}
    for name, (w, h) in {"wide": (96, 64), "square": (64, 64), "tall": (64, 96), "real": (832, 480)}.items():
        out[name] = root / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(out[name])
    frames = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    out["animated"] = root / "animated.gif"
    frames[0].save(out["animated"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out


def values(model=I2V, image=None, last_image=None, **kw) -> dict:
    v = dict(model=model, image=image, last_image=last_image, prompt="a fox turns its head", negative="", size="",
             frames=9, steps=2, shift=5.0, cfg=5.0, cfg2=3.0, boundary=0.9, solver="unipc", seed_mode="fixed",
             seed=3, cache="off", cache_threshold="", preset="",
             **{f"lora{i}": "" for i in range(3)}, **{f"lora{i}_strength": 1.0 for i in range(3)},
             **{f"lora{i}_low": 1.0 for i in range(3)})
    v.update(kw)
    return v


def upd(out: dict, comp, key: str = "value"):
    v = out[comp]
    return v.get(key) if isinstance(v, dict) else v


# ---------------------------------------------------------------------------------------------- size
def test_the_size_is_the_official_rule_for_the_image_and_a_chosen_size_wins(studio, images):
    tab = studio.tab
    out = tab.size_values(catalog.get("wan2.1-i2v-14b-480p"), images["real"])
    assert upd(out, tab.size) == "832x464"             # 480·832 at 832:480 rounds down to 464 (WAN_FACTS)
    assert ("832x464 (from the image)", "832x464") == upd(out, tab.size, "choices")[0]
    assert "The image is 832x480" in out[tab.size_note]
    assert upd(tab.size_values(catalog.get(I2V), images["wide"]), tab.size) == "64x48"
    assert upd(tab.size_values(catalog.get(I2V), images["tall"]), tab.size) == "48x64"
    req, _ = common.engine_api.check_request(tab.build_request(values(image=str(images["wide"]))))
    assert (req.width, req.height) == (64, 48)          # no size given: the image's
    req, _ = common.engine_api.check_request(tab.build_request(values(image=str(images["wide"]), size="64x64")))
    assert (req.width, req.height) == (64, 64)          # a chosen size overrides it


# ---------------------------------------------------------------------------------------------- images
def test_a_missing_or_animated_image_is_named_at_its_field_before_anything_loads(studio, images):
    tab = studio.tab
    assert set(tab.check(values(image=None))) == {"image"}
    problems = tab.check(values(image=str(images["animated"])))
    assert set(problems) == {"image"} and "animated" in problems["image"].lower()
    problems = tab.check(values(model=FLF, image=str(images["square"])))
    assert set(problems) == {"last_image"} and problems["last_image"].startswith("Last frame:")
    problems = tab.check(values(model=FLF, image=str(images["square"]), last_image=str(images["tall"])))
    assert set(problems) == {"last_image"} and "aspect" in problems["last_image"]
    assert tab.check(values(model=FLF, image=str(images["square"]), last_image=str(images["square"]))) == {}


def test_the_tab_offers_only_models_that_take_an_image_made_for_it_first(studio):
    ids = studio.tab.ready_ids()
    assert set(ids) == {I2V, I2V_A14, FLF}
    out = studio.tab.model_values(catalog.get(FLF))
    assert upd(out, studio.tab.last_image, "visible") is True
    assert upd(studio.tab.model_values(catalog.get(I2V)), studio.tab.last_image, "visible") is False


# ---------------------------------------------------------------------------------------------- LoRAs
def test_only_the_loras_that_fit_the_model_are_offered_and_a14b_gets_two_strengths(studio):
    picker = studio.tab.loras
    names = lambda m: [it.name for it in fitting_items(studio.engine.models_dirs, catalog.get(m))]  # noqa: E731
    assert names(I2V) == [FITS_IMAGE_MODELS]            # the others carry a 16-channel patch-embedding delta
    assert PAIR in names(A14) and PAIR not in names(T21)  # a high/low pair is one item, for A14B only
    out = picker.for_model(catalog.get(I2V_A14))
    _, name, high, low = picker.slots[0]
    assert upd(out, low, "visible") is True and upd(out, high, "label") == "High-noise strength"
    assert [c[1] for c in upd(out, name, "choices")] == [FITS_IMAGE_MODELS]
    out = picker.for_model(catalog.get(I2V))
    assert upd(out, low, "visible") is False and upd(out, high, "label") == "Strength"


def test_a_lone_expert_file_starts_at_zero_for_the_other_expert(studio):
    items = {it.name: it for it in fitting_items(studio.engine.models_dirs, catalog.get(A14))}
    assert default_strengths(items[PAIR]) == (1.0, 1.0)
    assert default_strengths(items["tiny_wan_comfyui.safetensors"]) == (1.0, 1.0)
    lone = SimpleNamespace(is_pair=False, files=[SimpleNamespace(expert="high")])
    assert default_strengths(lone) == (1.0, 0.0)


def test_the_slots_become_the_requests_loras_and_a_bad_strength_names_its_field(studio):
    picker = studio.tab.loras
    v = values(lora0=FITS_IMAGE_MODELS, lora0_strength=0.7, lora0_low=-0.5)
    assert picker.entries(v, catalog.get(I2V_A14)) == [{"file": FITS_IMAGE_MODELS, "strength": 0.7, "strength_low": -0.5}]
    assert picker.entries(v, catalog.get(I2V)) == [{"file": FITS_IMAGE_MODELS, "strength": 0.7, "strength_low": None}]
    with pytest.raises(UserError) as e:
        picker.entries(values(lora0=FITS_IMAGE_MODELS, lora0_strength=4.5), catalog.get(I2V))
    assert "strength" in e.value.field


def test_a_lora_made_for_another_model_is_refused_at_the_lora_field(studio, images):
    problems = studio.tab.check(values(image=str(images["square"]), lora0="tiny_wan_comfyui.safetensors"))
    assert set(problems) == {"lora0"}, problems


def test_a_preset_fills_the_sampling_fields_and_names_a_missing_file_beside_generate(studio):
    tab = studio.tab
    fields = {"steps": tab.steps, "guidance": tab.cfg, "guidance_2": tab.cfg2, "shift": tab.shift,
              "solver": tab.solver, "boundary": tab.boundary}
    out = tab.loras._preset_picked("wan2.2-t2v-a14b", "lightning-4step-wan2.2-t2v-a14b", fields=fields,
                                   error_box=tab.view.error)
    assert (out[tab.steps], out[tab.cfg], out[tab.cfg2], out[tab.shift], out[tab.solver], out[tab.boundary]) == \
        (4, 1.0, 1.0, 5.0, "euler", 0.875)
    where = str(studio.engine.models_dirs[0] / "loras")
    assert "high_noise_model.safetensors" in out[tab.view.error] and where in out[tab.view.error]
    req = Request(model="wan2.2-t2v-a14b", prompt="x")
    with pytest.raises(UserError) as e:
        tab.loras.apply({"preset": "lightning-4step-wan2.2-t2v-a14b"}, req)
    assert e.value.field == "preset" and "low_noise_model.safetensors" in e.value.problem


def test_a_preset_whose_files_are_in_place_adds_them_to_the_job(studio, tmp_path):
    p = presets.PRESETS["lightx2v-4step-wan2.1-t2v-14b"]
    dest = studio.engine.models_dirs[0] / "loras" / p.files[0].dest
    shutil.copy(studio.engine.models_dirs[0] / "loras" / FITS_IMAGE_MODELS, dest)
    try:
        req = studio.tab.loras.apply({"preset": p.id}, Request(model="wan2.1-t2v-14b", prompt="x", steps=4))
        assert [Path(e["file"]).name for e in req.loras] == [dest.name]
        note = studio.tab.loras._preset_status(catalog.get("wan2.1-t2v-14b"), p.id)[studio.tab.loras.preset_note]
        assert "wan-msg-ok" in note and dest.name in note
    finally:
        dest.unlink()


# ---------------------------------------------------------------------------------------------- step cache
def test_the_cache_offers_only_the_kinds_with_a_published_table():
    assert kinds_for(catalog.get("wan2.1-flf2v-14b-720p")) == ["off"]
    assert kinds_for(catalog.get("wan2.1-i2v-14b-480p")) == ["off", "magcache", "teacache"]
    assert kinds_for(catalog.get("wan2.2-i2v-a14b")) == ["off", "magcache"]


def test_a_bad_threshold_is_named_at_the_threshold_field(studio, images):
    with pytest.raises(UserError) as e:
        CacheSetting.fields({"cache": "magcache", "cache_threshold": "lots"})
    assert e.value.field == "cache_threshold"
    problems = studio.tab.check(values(image=str(images["square"]), cache="magcache", cache_threshold="2"))
    assert set(problems) == {"cache_threshold"}, problems


def test_the_cache_note_is_the_plans_own_sentence(studio):
    tab = studio.tab
    v = values(model=I2V_A14, cache="magcache", steps=10)
    note = tab.cache_note({}, *[v[k] for k in tab.inputs()])
    req = tab.build_request({**v, "image": None}, need_image=False)
    assert note == studio.engine.plan(req).step_cache and note.startswith("Step cache: MagCache")


# ---------------------------------------------------------------------------------------------- metadata
def test_load_settings_restores_all_but_the_image_and_asks_for_it(studio, images):
    tab = studio.tab
    v = values(model=I2V_A14, image=str(images["wide"]), prompt="a heron lands", steps=3, cfg=2.5, cfg2=1.5,
               boundary=0.85, solver="euler", seed=4242, size="64x64", cache="magcache", cache_threshold="0.1",
               lora0=FITS_IMAGE_MODELS, lora0_strength=0.7, lora0_low=-0.5)
    evs = list(studio.engine.run(tab.build_request(v)))
    done = next(e for e in evs if isinstance(e, events.Finished))
    out = tab.load_from_video(str(done.path), None, {})
    got = {"model": upd(out, tab.model), "prompt": out[tab.prompt], "size": upd(out, tab.size),
           "steps": out[tab.steps], "cfg": upd(out, tab.cfg), "cfg2": upd(out, tab.cfg2),
           "boundary": upd(out, tab.boundary), "solver": out[tab.solver], "seed": out[tab.seed],
           "cache": upd(out, tab.cache.kind), "threshold": upd(out, tab.cache.threshold),
           "lora": upd(out, tab.loras.slots[0][1]), "high": upd(out, tab.loras.slots[0][2]),
           "low": upd(out, tab.loras.slots[0][3]), "image": out[tab.image]}
    assert got == {"model": I2V_A14, "prompt": "a heron lands", "size": "64x64", "steps": 3, "cfg": 2.5, "cfg2": 1.5,
                   "boundary": 0.85, "solver": "euler", "seed": 4242, "cache": "magcache", "threshold": "0.1",
                   "lora": FITS_IMAGE_MODELS, "high": 0.7, "low": -0.5, "image": None}
    msg = out[tab.load_msg]
    assert "wide.png" in msg and "96x64" in msg and "upload" in msg
    assert dict(tab.video_choices())  # the video is offered for loading
