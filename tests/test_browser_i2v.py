"""The Image to Video tab in headless Chromium (Debian's chromium, driven by Playwright), on the tiny models:
an uploaded image sets the size by the official rule (shown, overridable), Generate streams a changing live
preview and ends with the video; a LoRA picked with its two A14B strengths is what the video's metadata
records. Screenshots at 1280x720 and 1920x1080, mid-run and done, go to tests/artifacts/ (and
docs/screenshots/ with UPDATE_SCREENSHOTS=1)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from tests.test_browser import (SIZES, browser, choose, open_page, phase, set_number, shoot, videos,  # noqa: F401
                                wait_phase)
from tests.ui_app_runner import start_app

P = "wan-i2v"
I2V_NAME = "Tiny Wan2.1 I2V with CLIP (random test weights)"
I2V_A14_NAME = "Tiny Wan2.2 I2V A14B (random test weights)"
LORA = "tiny_wan_diffusers.safetensors"          # the one tiny LoRA whose shapes fit the tiny image models
STEP_DELAY = 1.5      # seconds per step: two steps leave time to see the preview change and take a picture


@pytest.fixture(scope="module")
def app(tiny_root, tmp_path_factory):
    from wan_app import tiny_lora
    work = tmp_path_factory.mktemp("ui_browser_i2v")
    loras = work / "models"
    tiny_lora.write_all(loras)                    # models/loras/*.safetensors
    dirs = [tiny_root["diffusers-t2v"].path, tiny_root["diffusers-i2v"].path,
            tiny_root["diffusers-i2v-a14b"].path, loras]
    running = start_app(dirs, work / "outputs", work, step_delay=STEP_DELAY)
    running.work = work
    yield running
    running.stop()


@pytest.fixture(scope="module")
def wide_image(tmp_path_factory):
    """A 96x64 picture (aspect 1.5): the tiny models' 64x64 area gives 64x48 by the official rule."""
    path = tmp_path_factory.mktemp("i2v_images") / "wide.png"
    y, x = np.mgrid[0:64, 0:96]
    rgb = np.stack([x * 255 // 95, y * 255 // 63, np.full_like(x, 128)], -1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def open_i2v(browser, app, model_name: str):
    page = open_page(browser, app)
    page.get_by_role("tab", name="Image to Video").click()
    page.wait_for_function(f"document.querySelector('#{P}-model input')?.value", timeout=30_000)
    choose(page, f"{P}-model", model_name)
    return page


def open_section(page, name: str) -> None:
    """Open one of the tab's folded sections (the other tabs have sections of the same titles)."""
    page.locator(f"#{P}-{name} > button").first.click()
    page.wait_for_timeout(300)


def upload(page, path) -> None:
    page.locator(f"#{P}-image input[type=file]").set_input_files(str(path))
    page.wait_for_function(f"document.querySelector('#{P}-size input').value.includes('from the image')",
                           timeout=20_000)


def top_shots(page, name: str) -> None:
    """The top of the page at each screen size, now (the run goes on meanwhile)."""
    for w, h in SIZES:
        page.set_viewport_size({"width": w, "height": h})
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(150)
        shoot(page, f"{name}_{w}x{h}.png")
    page.set_viewport_size({"width": SIZES[0][0], "height": SIZES[0][1]})


def preview_src(page) -> str | None:
    img = page.locator(f"#{P}-preview img")
    return img.first.get_attribute("src") if img.count() else None


def new_video(app, before: set, timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        made = [p for p in videos(app) - before if p.with_suffix(".json").exists()]
        if made:
            return made[0]
        time.sleep(0.2)
    raise AssertionError("no video was written")


def test_an_uploaded_image_becomes_a_video_with_a_live_preview(app, browser, wide_image):
    page = open_i2v(browser, app, I2V_NAME)
    upload(page, wide_image)
    assert page.locator(f"#{P}-size input").input_value() == "64x48 (from the image)"
    assert "The image is 96x64" in page.locator(f"#{P}-size-note").inner_text()
    choose(page, f"{P}-size", "64x64")                     # the computed size is only a proposal
    page.locator(f"#{P}-prompt textarea").fill("The colours drift slowly to the right")
    open_section(page, "sampling")
    set_number(page, f"{P}-steps", 2)
    before = videos(app)
    page.locator(f"#{P}-generate").click()
    sources: list[str] = []
    deadline = time.time() + 60
    shot = False
    while time.time() < deadline and len(sources) < 2:
        src = preview_src(page)
        if src and (not sources or src != sources[-1]):
            sources.append(src)
        if src and not shot and phase(page, P) == "sample":
            top_shots(page, "i2v_running")                  # mid-run: denoising, a preview is up
            shot = True
        time.sleep(0.1)
    assert len(sources) >= 2, f"the preview never changed during the run: {sources}"
    assert page.locator(f"#{P}-generate").inner_text().startswith("Running")
    wait_phase(page, "done", prefix=P, timeout=60)
    page.wait_for_selector(f"#{P}-video video", timeout=30_000)
    page.wait_for_function(f"document.querySelector('#{P}-generate').innerText === 'Generate'")
    page.wait_for_timeout(800)
    top_shots(page, "i2v_done")
    meta = json.loads(new_video(app, before).with_suffix(".json").read_text())
    assert meta["model"] == "tiny-wan2.1-i2v" and (meta["width"], meta["height"]) == (64, 64)
    assert meta["image"]["name"] == "wide.png" and (meta["image"]["width"], meta["image"]["height"]) == (96, 64)
    page.close()


def test_a_lora_with_two_expert_strengths_is_in_the_videos_metadata(app, browser, wide_image):
    page = open_i2v(browser, app, I2V_A14_NAME)
    upload(page, wide_image)
    page.locator(f"#{P}-prompt textarea").fill("a slow pan")
    open_section(page, "sampling")
    set_number(page, f"{P}-steps", 2)
    open_section(page, "loras")
    assert page.locator(f"#{P}-lora0-low").is_visible(), "an A14B model has no low-noise strength slider"
    choose(page, f"{P}-lora0", f"{LORA} (the tiny test models)")
    set_number(page, f"{P}-lora0-strength", 0.7)
    set_number(page, f"{P}-lora0-low", -0.5)
    assert page.locator(f"#{P}-lora1").is_visible(), "the next LoRA slot did not appear"
    before = videos(app)
    page.locator(f"#{P}-generate").click()
    wait_phase(page, "done", prefix=P, timeout=90)
    meta = json.loads(new_video(app, before).with_suffix(".json").read_text())
    (used,) = meta["loras"]
    assert (used["item"], used["strength"], used["strength_low"]) == (LORA, 0.7, -0.5)
    assert {(f["expert"], f["strength"]) for f in used["files"]} == {("high", 0.7), ("low", -0.5)}
    assert meta["request"]["loras"] == [{"file": LORA, "strength": 0.7, "strength_low": -0.5}]
    page.close()
