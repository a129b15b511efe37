"""The web app driven through its API with gradio_client, against a real server subprocess running the tiny
models on CPU: streaming previews, the A14B expert badge, Stop, cancel, the one-job-at-a-time queue."""
from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path

import pytest

from tests.ui_app_runner import start_app

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.utils import Status  # noqa: E402

T21, A14 = "tiny-wan2.1-t2v", "tiny-wan2.2-t2v-a14b"
STEP_DELAY = 0.15     # seconds per step, so a run lasts long enough to watch and stop
# /generate's outputs, in order (ui.t2v_tab: the shared RunView, then the tab's own)
STATUS, NOTICES, BADGE, PREVIEW, VIDEO, PLAN, ERROR, SEED_USED, INFO, GALLERY = range(10)


@pytest.fixture(scope="module")
def app(tiny_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("ui_app")
    dirs = [tiny_root["diffusers-t2v"].path, tiny_root["diffusers-a14b"].path]
    running = start_app(dirs, work / "outputs", work, step_delay=STEP_DELAY)
    yield running
    running.stop()


def args(model=T21, prompt="a red fox in the snow", steps=4, frames=9, shift=5.0, seed=7, size="64x64"):
    cfg, cfg2, boundary = (4.0, 3.0, 0.875) if model == A14 else (5.0, 3.0, 0.875)
    return (model, prompt, "", size, frames, steps, shift, cfg, cfg2, boundary, "unipc", "fixed", seed)


def is_update(v) -> bool:
    """gr.skip() arrives as an update dict: the component kept its value."""
    return isinstance(v, dict) and v.get("__type__") == "update"


def states(outputs) -> list[tuple]:
    """What the page shows after each streamed message: a component a message leaves out keeps its last
    value, as in the browser (the client hands each message over raw)."""
    out, cur = [], None
    for o in outputs:
        o = list(o)
        cur = [None if is_update(v) else v for v in o] if cur is None else \
            [c if is_update(v) else v for c, v in zip(cur, o)]
        out.append(tuple(cur))
    return out


def attr(html: str, name: str) -> str | None:
    m = re.search(rf'data-{name}="([^"]*)"', html or "")
    return m.group(1) if m else None


def phase(job_or_outputs) -> str | None:
    outs = job_or_outputs.outputs() if hasattr(job_or_outputs, "outputs") else job_or_outputs
    s = states(outs)
    return attr(s[-1][STATUS], "phase") if s else None


def previews(outputs) -> list[tuple[int, str, str]]:
    """(step, expert, preview file) for every streamed update that carried a new preview image."""
    seen, out = set(), []
    last_step = 0
    for s in states(outputs):
        status, badge, preview = s[STATUS], s[BADGE], s[PREVIEW]
        if attr(status, "phase") == "sample":
            last_step = int(attr(status, "step"))
        path = preview.get("path") if isinstance(preview, dict) else preview
        if not path or path in seen:
            continue
        seen.add(path)
        out.append((last_step + 1, attr(badge, "expert"), path))
    return out


def wait_for_step(job, at_least: int = 1, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for s in states(job.outputs()):
            if attr(s[STATUS], "phase") == "sample" and int(attr(s[STATUS], "step")) >= at_least:
                return
        if job.done():
            raise AssertionError(f"the run ended before step {at_least}: {job.outputs()[-1:]}")
        time.sleep(0.05)
    raise AssertionError(f"no step {at_least} within {timeout}s")


def videos(app) -> set[Path]:
    return set(app.outputs_dir.glob("*/*.mp4"))


def video_path(v):
    return v.get("video", v).get("path") if isinstance(v, dict) and isinstance(v.get("video", v), dict) \
        else (v["video"] if isinstance(v, dict) else v)


def test_generation_streams_a_preview_every_step_and_ends_with_a_playable_mp4(app):
    from wan_app.media import probe
    c = Client(app.url, verbose=False)
    job = c.submit(*args(steps=4, seed=1234), api_name="/generate")
    job.result(timeout=180)
    outs = job.outputs()
    final = states(outs)[-1]
    assert attr(final[STATUS], "phase") == "done", final[STATUS]
    got = previews(outs)
    assert [s for s, _, _ in got] == [1, 2, 3, 4], got
    assert all(Path(p).stat().st_size > 0 for _, _, p in got)
    info_ = probe(video_path(final[VIDEO]))
    assert (info_.frames, info_.width, info_.height) == (9, 64, 64)
    assert final[SEED_USED] == "1234"
    assert json.loads(final[INFO])["request"]["prompt"] == "a red fox in the snow"
    assert attr(final[BADGE], "expert") == ""      # one-expert models show no expert badge
    assert len(final[GALLERY]) >= 1                # the new video is in the gallery of past outputs
    assert "The plan this run uses" in final[PLAN] and "Blocks swapped" in final[PLAN]


def test_a14b_badge_flips_to_the_low_noise_expert_at_the_official_step(app):
    # 10 steps at shift 12, boundary 0.875: timesteps >= 875 are the high-noise expert's, i.e. steps 0-6.
    c = Client(app.url, verbose=False)
    job = c.submit(*args(model=A14, steps=10, shift=12.0, seed=3), api_name="/generate")
    job.result(timeout=180)
    assert phase(job) == "done"
    got = previews(job.outputs())
    assert [s for s, _, _ in got] == list(range(1, 11))
    assert [e for _, e, _ in got] == ["high"] * 7 + ["low"] * 3
    badges = [s[BADGE] for s in states(job.outputs()) if attr(s[BADGE], "expert") == "low"]
    assert badges and attr(badges[0], "switch-step") == "7"
    assert "switched at step 8" in badges[-1]


def test_stop_ends_a_run_between_steps_and_the_page_stays_usable(app):
    c = Client(app.url, verbose=False)
    before = videos(app)
    job = c.submit(*args(steps=60, seed=5), api_name="/generate")
    wait_for_step(job, 2)
    c.predict(api_name="/stop")
    t0 = time.time()
    job.result(timeout=60)
    assert time.time() - t0 < 10
    assert phase(job) == "stopped"
    steps = [int(attr(s[STATUS], "step")) for s in states(job.outputs()) if attr(s[STATUS], "step")]
    assert max(steps) < 60
    assert videos(app) == before                   # no video from a stopped run
    again = c.submit(*args(steps=2, seed=6), api_name="/generate")
    again.result(timeout=120)
    assert phase(again) == "done"


def test_a_cancelled_api_job_never_writes_a_video(app):
    """gradio_client's Job.cancel() reaches the job: running, it stops at its next step; waiting in the
    queue, it never starts; cancelled at once (before the queue answered), it never runs either."""
    c_run, c_wait = Client(app.url, verbose=False), Client(app.url, verbose=False)
    before = videos(app)
    running = c_run.submit(*args(steps=40, seed=11), api_name="/generate")
    wait_for_step(running, 1)
    waiting = c_wait.submit(*args(steps=3, seed=12), api_name="/generate")
    deadline = time.time() + 30
    while waiting.status().code != Status.IN_QUEUE and time.time() < deadline:
        time.sleep(0.05)
    waiting.cancel()
    running.cancel()
    for i in range(6):
        job = Client(app.url, verbose=False).submit(*args(steps=12, seed=100 + i), api_name="/generate")
        job.cancel()
        time.sleep(0.3)
    time.sleep(40 * STEP_DELAY + 3)                # longer than the first run would have taken
    assert videos(app) == before, "a cancelled job wrote a video"
    # the GPU is free again at once
    c = Client(app.url, verbose=False)
    nxt = c.submit(*args(steps=2, seed=13), api_name="/generate")
    nxt.result(timeout=60)
    assert phase(nxt) == "done"


def test_a_second_job_of_the_same_session_is_refused_and_names_the_running_one(app):
    c = Client(app.url, verbose=False)
    first = c.submit(*args(steps=30, seed=21), api_name="/generate")
    wait_for_step(first, 1)
    with pytest.raises(Exception) as e:
        c.predict(*args(steps=2, seed=22), api_name="/generate")
    assert "Text to Video job is still running" in str(e.value)
    c.predict(api_name="/stop")
    first.result(timeout=60)


def test_a_bad_value_is_refused_naming_its_field_before_anything_is_queued(app):
    c = Client(app.url, verbose=False)
    before = videos(app)
    with pytest.raises(Exception) as e:
        c.predict(*args(shift=500.0), api_name="/generate")
    assert "Shift: 500.0 is out of range" in str(e.value)
    with pytest.raises(Exception) as e:
        c.predict(*args(frames=7), api_name="/generate")
    assert "Frames: 7 is not of the form 4n+1" in str(e.value)
    assert videos(app) == before


def test_a_prompt_longer_than_512_tokens_says_how_much_was_cut(app):
    c = Client(app.url, verbose=False)
    job = c.submit(*args(prompt="a red fox runs through fresh snow " * 200, steps=1), api_name="/generate")
    job.result(timeout=120)
    final = states(job.outputs())[-1]
    assert attr(final[STATUS], "phase") == "done"
    notice = html.unescape(re.sub(r"<[^>]+>", "", final[NOTICES] or ""))
    assert re.search(r"The prompt is \d+ tokens longer than umT5.s 512", notice), notice


def test_a_second_request_waits_in_the_queue_while_one_runs(app):
    first_client, second_client = Client(app.url, verbose=False), Client(app.url, verbose=False)
    first = first_client.submit(*args(steps=30, seed=8), api_name="/generate")
    wait_for_step(first, 1)
    second = second_client.submit(*args(steps=2, seed=9), api_name="/generate")
    saw_queue = False
    deadline = time.time() + 60
    while not first.done() and time.time() < deadline:
        st = second.status()
        if st.code == Status.IN_QUEUE:
            saw_queue = True
            assert st.rank is not None and st.rank >= 0
        first_now = states(first.outputs())[-1][STATUS] if first.outputs() else ""
        if attr(first_now, "phase") == "sample" and int(attr(first_now, "step")) < 25:
            assert phase(second) in (None, "queued"), f"the second job started while the first was at {first_now}"
        time.sleep(0.05)
    assert saw_queue, "the second job never reported a queue position"
    for job in (first, second):
        job.result(timeout=60)
        assert phase(job) == "done"


def test_load_settings_restores_every_control_from_a_video(app):
    c = Client(app.url, verbose=False)
    job = c.submit(*args(model=A14, steps=3, shift=9.5, seed=4242, prompt="a heron lands"), api_name="/generate")
    job.result(timeout=120)
    final = states(job.outputs())[-1]
    newest = max(app.outputs_dir.glob("*/*.mp4"), key=lambda p: p.stat().st_mtime)
    assert Path(video_path(final[VIDEO])).name == newest.name
    labels = [r["label"] for r in c.view_api(print_info=False, return_format="dict")
              ["named_endpoints"]["/load_settings"]["returns"]]
    got = dict(zip(labels, [v.get("value") if is_update(v) else v
                            for v in c.predict(str(newest), api_name="/load_settings")]))
    assert (got["Model"], got["Prompt"], got["Size (width x height)"], got["Frames (4n+1)"], got["Steps"],
            got["Shift"]) == (A14, "a heron lands", "64x64", 9, 3, 9.5)
    assert (got["CFG"], got["CFG (low-noise expert)"], got["Expert switch boundary"], got["Solver"], got["Seed"],
            got["Seed value (when fixed)"]) == (4.0, 3.0, 0.875, "unipc", "fixed", 4242)
    refused = c.predict("/etc/passwd", api_name="/load_settings")
    assert "Choose one of your outputs" in refused[-1]


def test_extend_tab_makes_a_video_longer_than_one_window(app):
    from wan_app.media import probe
    c = Client(app.url, verbose=False)
    # model, prompt, negative, size, total, window, overlap, color, upload, from_output, seed_mode, seed
    job = c.submit(T21, "a fox runs\na fox jumps", "", "64x64", 17, 0, 0, 1.0, None, None, "fixed", 11,
                   api_name="/extend")
    job.result(timeout=300)
    outs = states(job.outputs())
    assert attr(outs[-1][STATUS], "phase") == "done", outs[-1][STATUS]
    assert any(attr(s[STATUS], "window") == "1" and int(attr(s[STATUS], "windows") or 0) >= 2 for s in outs), \
        "the progress never named the second window"
    assert any("Window 2/" in (s[STATUS] or "") for s in outs)
    assert probe(video_path(outs[-1][VIDEO])).frames == 17
