"""The real page in headless Chromium (Debian's `chromium` package, driven by Playwright): type a prompt,
press Generate, watch the live preview change, get the video; a screenshot of every tab is kept in
tests/artifacts/ (and the README's in docs/screenshots/ with UPDATE_SCREENSHOTS=1)."""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.ui_app_runner import start_app

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
# The README's screenshots are rewritten only when asked (UPDATE_SCREENSHOTS=1), so a test run does not
# dirty the tree; the same shots always go to tests/artifacts/.
SCREENSHOTS = ROOT / "docs" / "screenshots" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else ARTIFACTS
CHROMIUM = os.environ.get("WAN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
A14 = "tiny-wan2.2-t2v-a14b"


def chromium_path() -> str:
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if path:
        return path
    if sys.platform.startswith("linux"):
        pytest.fail(f"Chromium not found at {CHROMIUM}: run the test setup (`apt-get install -y chromium`, see "
                    ".ci/) — this test never downloads a browser (no `playwright install`).")
    pytest.skip("the browser test runs on Linux with Debian's chromium")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    exe = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app(tiny_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("ui_browser")
    dirs = [tiny_root["diffusers-t2v"].path, tiny_root["diffusers-a14b"].path]
    running = start_app(dirs, work / "outputs", work, step_delay=0.6)
    yield running
    running.stop()


def choose(page, elem_label: str, value: str) -> None:
    """Pick a value in a Gradio dropdown: open it by its label, click the option."""
    box = page.get_by_label(elem_label, exact=True)
    box.click()
    page.get_by_role("option", name=value).first.click()


def preview_src(page) -> str | None:
    img = page.locator("#wan-preview img")
    return img.first.get_attribute("src") if img.count() else None


def test_prompt_to_video_with_a_live_preview_in_a_real_browser(app, browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(app.url)
    page.wait_for_selector("#wan-prompt textarea", timeout=60_000)
    choose(page, "Model", "Tiny Wan2.2 T2V A14B (random test weights)")
    page.wait_for_function("document.querySelector('#wan-badge') !== null")
    page.locator("#wan-prompt textarea").fill("A red fox runs through fresh snow at dawn, cinematic")
    page.locator("#wan-generate").click()

    sources: list[str] = []
    deadline = time.time() + 90
    while time.time() < deadline and len(sources) < 3:
        src = preview_src(page)
        if src and (not sources or src != sources[-1]):
            sources.append(src)
            if len(sources) == 2:
                page.screenshot(path=str(SCREENSHOTS / "t2v_running.png"), full_page=True)
        time.sleep(0.1)
    assert len(sources) >= 2, f"the preview never changed during the run: {sources}"
    badge = page.locator("#wan-badge .wan-expert")
    assert badge.get_attribute("data-expert") in ("high", "low")

    page.wait_for_selector("#wan-video video", timeout=90_000)
    page.wait_for_selector("#wan-status [data-phase='done']", timeout=30_000)
    assert page.locator("#wan-badge .wan-expert").get_attribute("data-expert") == "low"
    assert page.locator("#wan-seed-used input, #wan-seed-used textarea").first.input_value().isdigit()
    page.screenshot(path=str(ARTIFACTS / "tab_text_to_video.png"), full_page=True)

    for tab, name in (("Extend", "tab_extend.png"), ("Settings", "tab_settings.png")):
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(800)
        page.screenshot(path=str(ARTIFACTS / name), full_page=True)
        if tab == "Settings":
            assert "Blocks swapped" in page.locator("#wan-plan").inner_text()
            page.screenshot(path=str(SCREENSHOTS / "settings.png"), full_page=True)
    page.close()
