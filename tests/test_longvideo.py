"""Long video (Extend) on CPU with the tiny models: window arithmetic, seams, resume after a real kill,
flat memory, input checks before loading, Stop."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from wan_app import events
from wan_app.colormatch import lab_stats, match_color
from wan_app.engine import Engine
from wan_app.errors import UserError
from wan_app.hardware import Hardware
from wan_app.journal import Journal, journal_path
from wan_app.longvideo import LongRequest, list_resumable, new_frames, plan_windows, window_seed
from wan_app.media import probe, read_metadata, read_video, write_mp4
from wan_app.request import Request
from tests.support import clip, load, window_frames

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "longvideo_worker.py"
CPU = Hardware.simulated(vram_gb=None, ram_gb=24.0)
T2V, A14B, TI2V = "diffusers-t2v", "diffusers-a14b", "diffusers-ti2v"


def layout(tiny_root, name):
    info = tiny_root[name]
    return info.path, info.model_id


def engine_for(tiny_root, name, out_dir):
    path, _ = layout(tiny_root, name)
    return Engine([path], out_dir, hardware=CPU)


def request(tiny_root, name, **kw):
    kw = {"prompt": "a red ball rolls\na blue cube spins", "width": 64, "height": 64, "steps": 2, "seed": 5,
          **kw}
    return Request(model=layout(tiny_root, name)[1], **kw)


def drain(stream):
    return list(stream)


def only(evs, kind):
    return [e for e in evs if isinstance(e, kind)]


def last_of(evs):
    ends = [e for e in evs if isinstance(e, (events.Finished, events.Failed, events.Cancelled))]
    assert ends, "the stream ended without Finished / Failed / Cancelled"
    return ends[-1]


def run_long(engine, lreq, **kw):
    return engine.run(lreq, **kw)


def resume_long(engine, path, **kw):
    return engine.resume(path, **kw)


# ---- arithmetic -------------------------------------------------------------------------------
@pytest.mark.parametrize("total,window,overlap,from_video", [
    (241, 81, 5, False), (81, 81, 5, False), (17, 9, 5, False), (19, 9, 5, False), (5, 81, 5, False),
    (1000, 81, 9, False), (80, 81, 5, True), (3, 33, 1, True), (121 * 3, 121, 5, False)])
def test_windows_cover_exactly_the_requested_frames(total, window, overlap, from_video):
    ws = plan_windows(total, window, overlap, from_video)
    assert all((w - 1) % 4 == 0 and overlap < w <= window or (k == 0 and not from_video and w <= window)
               for k, w in enumerate(ws))
    adds = new_frames(ws, overlap, total, from_video)
    assert sum(adds) == total and all(a > 0 for a in adds)
    # every window but the last is full; the last generates fewer than 4 frames past the end
    assert all(w == window for w in ws[:-1])
    generated = sum(w if (k == 0 and not from_video) else w - overlap for k, w in enumerate(ws))
    assert 0 <= generated - total < 4


def test_window_plan_examples():
    assert plan_windows(241, 81, 5, False) == [81, 81, 81, 13]     # 81 + 76 + 76 + 8
    assert plan_windows(17, 9, 5, False) == [9, 9, 9]
    assert plan_windows(8, 9, 5, True) == [9, 9]


@pytest.mark.parametrize("window,overlap,field", [(80, 5, "window"), (81, 4, "overlap"), (9, 9, "window"),
                                                  (5, 5, "window"), (81, 0, "overlap")])
def test_bad_window_or_overlap_is_a_user_error(window, overlap, field):
    with pytest.raises(UserError) as e:
        plan_windows(100, window, overlap, False)
    assert e.value.field == field and e.value.fix


def test_each_window_has_its_own_reproducible_seed():
    seeds = [window_seed(123, k) for k in range(50)]
    assert seeds[0] == 123 and len(set(seeds)) == 50
    assert seeds == [window_seed(123, k) for k in range(50)]
    assert window_seed(124, 1) != seeds[1]


# ---- colour match ------------------------------------------------------------------------------
def test_color_match_removes_a_drift_and_strength_blends():
    rng = np.random.default_rng(0)
    ref = rng.integers(40, 215, (5, 32, 32, 3), dtype=np.uint8)
    drifted = np.clip(ref.astype(int) * 0.8 + np.array([30, 0, -20]), 0, 255).astype(np.uint8)
    fixed = match_color(drifted, measured=drifted, reference=ref, strength=1.0)
    err = lambda a: np.abs(lab_stats(a)[0] - lab_stats(ref)[0]).max()  # noqa: E731
    assert err(drifted) > 5 and err(fixed) < 0.5
    half = match_color(drifted, measured=drifted, reference=ref, strength=0.5)
    assert err(fixed) < err(half) < err(drifted)
    assert match_color(drifted, drifted, ref, strength=0.0) is drifted


# ---- whole runs --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [T2V, A14B, TI2V])
def test_three_windows_give_exactly_the_expected_frames(tiny_root, tmp_path, name):
    engine = engine_for(tiny_root, name, tmp_path)
    steps = 10 if name == A14B else 2          # A14B: enough steps that both experts run in every window
    out = tmp_path / "long.mp4"
    evs = drain(run_long(engine, LongRequest(request(tiny_root, name, steps=steps), total_frames=17, window=9),
                         out_path=out))
    done = last_of(evs)
    assert isinstance(done, events.Finished), done
    assert probe(out).frames == 17 and (probe(out).width, probe(out).height) == (64, 64)
    wd = only(evs, events.WindowDone)
    assert [(w.window, w.windows, w.frames_total) for w in wd] == [(0, 3, 9), (1, 3, 13), (2, 3, 17)]
    samples = [e for e in only(evs, events.Progress) if e.phase == "sample"]
    assert {(e.window, e.windows) for e in samples} == {(0, 3), (1, 3), (2, 3)}
    assert {e.window for e in only(evs, events.Preview)} == {0, 1, 2}
    if name == A14B:
        assert sorted(e.window for e in only(evs, events.ExpertSwitch)) == [0, 1, 2]
    meta = read_metadata(out)
    assert meta["frames"] == 17 and meta["long"]["windows"] == [9, 9, 9] and meta["long"]["complete"]
    # finished: no journal, no overlap files, no parts folder left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.json", "long.mp4"]


def test_generate_command_makes_long_videos_window_by_window(tiny_root, tmp_path):
    from wan_app.cli import main
    path, model = layout(tiny_root, T2V)
    out = tmp_path / "g.mp4"
    code = main(["generate", "--models-dir", str(path), "--model", model, "--prompt", "waves", "--size", "64x64",
                 "--steps", "2", "--seed", "1", "--frames", "19", "--window", "9", "--out", str(out), "--quiet"])
    assert code == 0 and probe(out).frames == 19          # 9 + 4 + 4 + 2 (the last window cut)


@pytest.mark.parametrize("name", [T2V, TI2V])
def test_window_starts_with_the_overlap_it_continues(tiny_root, tmp_path, name):
    """The tolerance is measured, not guessed: the only loss between the overlap frames and the new
    window's first O frames should be the VAE round trip (encode → decode of those frames), because at
    σ = 0 the overlap latents are put back exactly and the causal VAE decodes the first latent frames
    without looking at later ones. So the new window's first O frames must equal decode(encode(overlap))
    up to float noise (≤ 1 code value from uint8 rounding), and their distance to the overlap must be the
    round-trip distance. Random tiny VAEs reconstruct badly, which is why the round trip is the reference."""
    engine = engine_for(tiny_root, name, tmp_path)
    base = request(tiny_root, name, frames=9)
    job = clip(engine, base, tmp_path / "x.mp4")
    host = load(engine, job)
    first = window_frames(engine, job, 5)
    overlap = first[-5:].copy()
    frames = window_frames(engine, job, window_seed(5, 1), overlap)
    free = window_frames(engine, job, window_seed(5, 1))
    roundtrip = host.codec.decode(host.codec.encode(overlap))
    assert roundtrip.shape == overlap.shape

    seam = np.abs(frames[:5].astype(int) - roundtrip.astype(int))
    rt_err = np.abs(roundtrip.astype(int) - overlap.astype(int)).mean()
    win_err = np.abs(frames[:5].astype(int) - overlap.astype(int)).mean()
    free_gap = np.abs(free[:5].astype(int) - roundtrip.astype(int)).mean()
    print(f"{name}: seam vs round trip max {seam.max()}, mean |window-overlap| {win_err:.2f}, "
          f"VAE round trip {rt_err:.2f}; without injection the same seed is {free_gap:.2f} away")
    assert seam.max() <= 1
    assert abs(win_err - rt_err) <= 0.5
    assert free_gap > 5                      # the injection, not chance, is what makes the seam match


# ---- resume after a real kill -----------------------------------------------------------------
def worker(tiny_root, out, *extra, env=None, name=T2V):
    path, model = layout(tiny_root, name)
    cmd = [sys.executable, str(WORKER), "--models-dir", str(path), "--model", model, "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {}),
                                 "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert lines and lines[-1].get("done") == "Finished", f"worker failed: {out[-2000:]} {err[-3000:]}"
    return lines


def test_killed_job_resumes_to_the_same_frames_as_an_uninterrupted_run(tiny_root, tmp_path):
    args = ["--frames", "25", "--window", "9", "--steps", "3", "--seed", "77"]   # 5 windows
    whole = worker(tiny_root, tmp_path / "whole" / "v.mp4", *args)
    out = tmp_path / "killed" / "v.mp4"
    victim = worker(tiny_root, out, *args, "--step-sleep", "0.3")
    journal = journal_path(out)
    deadline = time.monotonic() + 240
    done = 0
    while time.monotonic() < deadline and victim.poll() is None:
        if journal.exists():
            done = json.loads(journal.read_text())["windows_done"]
            if done >= 2:
                break
        time.sleep(0.02)
    assert victim.poll() is None, victim.communicate()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    j = Journal.load(out)
    assert 2 <= j.windows_done < 5
    assert probe(out).frames == j.frames_done          # the finished windows play
    assert [r.path for r in list_resumable(out.parent)] == [out]

    finish(worker(tiny_root, out, "--resume"))
    finish(whole)
    a, b = read_video(out), read_video(tmp_path / "whole" / "v.mp4")
    assert a.shape == b.shape == (25, 64, 64, 3)
    assert np.array_equal(a, b)
    assert a.std(axis=0).mean() > 1                     # a moving video, not a constant one
    assert not journal.exists() and list_resumable(out.parent) == []


def test_extend_with_an_i2v_model_resumes_after_a_kill_to_the_same_frames(tiny_root, tmp_path):
    """An I2V model continues a video through its image path (the window's first frame) plus overlap
    re-injection; a SIGKILL mid-job and a resume give exactly the frames of an uninterrupted run."""
    src = tmp_path / "in.mp4"
    write_mp4(np.random.default_rng(1).integers(0, 256, (9, 64, 64, 3), dtype=np.uint8), src, 16)
    args = ["--video", str(src), "--frames", "12", "--window", "9", "--steps", "2", "--seed", "5"]   # 3 windows
    whole = worker(tiny_root, tmp_path / "whole" / "v.mp4", *args, name="diffusers-i2v")
    out = tmp_path / "killed" / "v.mp4"
    victim = worker(tiny_root, out, *args, "--step-sleep", "0.3", name="diffusers-i2v")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None:
        if journal_path(out).exists() and json.loads(journal_path(out).read_text())["windows_done"] >= 1:
            break
        time.sleep(0.02)
    assert victim.poll() is None, victim.communicate()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert 1 <= Journal.load(out).windows_done < 3
    finish(worker(tiny_root, out, "--resume", name="diffusers-i2v"))
    finish(whole)
    a, b = read_video(out), read_video(tmp_path / "whole" / "v.mp4")
    assert a.shape == b.shape == (21, 64, 64, 3) and np.array_equal(a, b)


def test_a_second_resume_of_a_running_job_is_refused_while_the_first_runs(tiny_root, tmp_path):
    out = tmp_path / "busy" / "v.mp4"
    first = worker(tiny_root, out, "--frames", "25", "--window", "9", "--steps", "3", "--step-sleep", "0.3")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None and not journal_path(out).exists():
            time.sleep(0.02)
        assert first.poll() is None, first.communicate()
        evs = drain(resume_long(engine_for(tiny_root, T2V, tmp_path), out))
        end = last_of(evs)
        assert isinstance(end, events.Failed) and "already running" in end.message, end
        assert not any(isinstance(e, events.PlanReady) for e in evs)       # refused before anything ran
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_h264_encoding_is_deterministic_for_identical_frames(tmp_path):
    """What the resume comparison relies on: the same frames encode to the same bytes."""
    frames = np.random.default_rng(3).integers(0, 255, (9, 64, 64, 3), dtype=np.uint8)
    write_mp4(frames, tmp_path / "a.mp4", 16)
    write_mp4(frames, tmp_path / "b.mp4", 16)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


# ---- memory ------------------------------------------------------------------------------------
# Fixed glibc thresholds: big temporaries are mmapped and given back on free, so a peak measures what
# the job holds, not where the allocator happened to leave its heap top.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def test_peak_ram_does_not_grow_with_the_number_of_windows(tiny_root, tmp_path):
    """Peak RSS of fresh processes making 2 and 5 windows. 128x128 x 25-frame windows are 1.2 MB each, above
    the ~0.5 MB that peaks vary between identical runs, while a job that kept its frames would grow by three
    windows (3.5 MB; 2.8 MB of new frames alone) — so this can fail."""
    w, size, o = 25, 128, 5
    window_mb = w * size * size * 3 / 2**20
    common = ["--window", str(w), "--size", f"{size}x{size}", "--steps", "1"]
    procs = {n: worker(tiny_root, tmp_path / f"n{n}" / "v.mp4", "--frames", str(w + (w - o) * (n - 1)), *common,
                       env=MALLOC_ENV) for n in (2, 5)}
    peaks = {n: finish(p)[-1]["maxrss_mb"] for n, p in procs.items()}
    line = (f"peak RSS: 2 windows {peaks[2]:.1f} MB, 5 windows {peaks[5]:.1f} MB, difference "
            f"{peaks[5] - peaks[2]:+.1f} MB; one window is {window_mb:.2f} MB")
    print(line)
    assert abs(peaks[5] - peaks[2]) < window_mb, line


# ---- inputs ------------------------------------------------------------------------------------
class LoadSpy:
    def __init__(self, engine):
        self.calls = 0
        real = engine.host.load

        def load(*args):
            self.calls += 1
            return real(*args)
        engine.host.load = load


@pytest.mark.parametrize("kind", ["garbage", "missing", "too short"])
def test_bad_input_video_is_rejected_before_any_model_loads(tiny_root, tmp_path, kind):
    engine = engine_for(tiny_root, T2V, tmp_path / "out")
    spy = LoadSpy(engine)
    video = tmp_path / "in.mp4"
    if kind == "garbage":
        video.write_bytes(b"this is not a video" * 100)
    elif kind == "too short":
        write_mp4(np.full((3, 64, 64, 3), 90, np.uint8), video, 16)
    evs = drain(run_long(engine, LongRequest(request(tiny_root, T2V), total_frames=8, window=9,
                                             input_video=video)))
    fail = last_of(evs)
    assert isinstance(fail, events.Failed) and fail.message.startswith("video:"), fail
    assert ("at least" in fail.message) == (kind == "too short")
    assert spy.calls == 0 and not only(evs, events.PlanReady)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.mp4"))


def test_extending_a_video_keeps_it_and_adds_the_new_frames(tiny_root, tmp_path):
    """Any container / fps / size: a 30 fps 96x80 webm becomes 16 fps 64x64, then 8 new frames follow."""
    from wan_app.cli import main
    from wan_app.cli_extend import add_extend_command
    src = tmp_path / "in.webm"
    # smooth gradients (random pixels would measure the codec, not us); red ramps over time
    yy, xx = np.mgrid[0:80, 0:96]
    frames = np.zeros((20, 80, 96, 3), np.uint8)
    frames[..., 1] = (xx * 255 // 95).astype(np.uint8)
    frames[..., 2] = (yy * 255 // 79).astype(np.uint8)
    frames[..., 0] = np.linspace(0, 255, 20, dtype=np.uint8)[:, None, None]
    write_mp4(frames, tmp_path / "tmp.mp4", 30)
    subprocess.run([__import__("imageio_ffmpeg").get_ffmpeg_exe(), "-loglevel", "error", "-i",
                    str(tmp_path / "tmp.mp4"), "-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "10", str(src)], check=True)
    expected_in = read_video(src, 64, 64, 16)
    path, model = layout(tiny_root, T2V)
    out = tmp_path / "ext.mp4"
    code = main(["extend", "--video", str(src), "--models-dir", str(path), "--model", model, "--prompt", "more",
                 "--size", "64x64", "--steps", "2", "--seed", "4", "--frames", "8", "--window", "9",
                 "--out", str(out), "--quiet"], extra_commands=[add_extend_command])
    assert code == 0
    got = read_video(out)
    n_in = len(expected_in)
    assert len(got) == n_in + 8 and 8 <= n_in <= 12
    # the input part went through one more H.264 encode: a few code values, not a different video
    assert np.abs(got[:n_in].astype(int) - expected_in.astype(int)).mean() < 4
    assert read_metadata(out)["long"]["input_frames"] == n_in


# ---- Stop ---------------------------------------------------------------------------------------
def test_stop_mid_window_leaves_a_playable_video_and_a_journal_to_resume(tiny_root, tmp_path):
    engine = engine_for(tiny_root, T2V, tmp_path)
    cancel = threading.Event()
    out = tmp_path / "stop.mp4"
    state = {"windows": 0}
    engine.step_hooks.append(lambda i, expert: cancel.set() if state["windows"] == 2 and i == 0 else None)
    evs = []
    for ev in run_long(engine, LongRequest(request(tiny_root, T2V), total_frames=21, window=9), cancel=cancel,
                       out_path=out):
        evs.append(ev)
        if isinstance(ev, events.WindowDone):
            state["windows"] += 1
    stop = last_of(evs)
    assert isinstance(stop, events.Cancelled) and stop.path == out, stop
    assert probe(out).frames == 13                                 # windows 0 and 1 (9 + 4)
    j = Journal.load(out)
    assert (j.windows_done, j.frames_done, j.frames_total) == (2, 13, 21)
    [job] = list_resumable(tmp_path)
    assert (job.path, job.frames_done, job.frames_total) == (out, 13, 21)

    engine.step_hooks.clear()
    evs = drain(resume_long(engine, out))
    assert isinstance(last_of(evs), events.Finished), last_of(evs)
    assert [w.window for w in only(evs, events.WindowDone)] == [2, 3]
    assert probe(out).frames == 21 and list_resumable(tmp_path) == []


def test_crash_between_append_and_journal_update_resumes_without_a_gap(tiny_root, tmp_path, monkeypatch):
    """The window was appended to the video but the process died before the journal said so: the resume
    must see the extra part, take the overlap saved before the append, and give the same video."""
    engine = engine_for(tiny_root, T2V, tmp_path)
    lreq = LongRequest(request(tiny_root, T2V), total_frames=21, window=9)
    drain(run_long(engine, lreq, out_path=tmp_path / "whole.mp4"))

    real_save = Journal.save

    def dying_save(self):
        if self.windows_done == 2:
            raise RuntimeError("simulated crash")
        real_save(self)
    monkeypatch.setattr(Journal, "save", dying_save)
    out = tmp_path / "crashed.mp4"
    fail = last_of(drain(run_long(engine, lreq, out_path=out)))
    assert isinstance(fail, events.Failed) and "--resume" in fail.hint
    monkeypatch.setattr(Journal, "save", real_save)
    j = Journal.load(out)
    assert (j.windows_done, probe(out).frames) == (1, 13)       # journal one window behind the video

    evs = drain(resume_long(engine, out))
    assert isinstance(last_of(evs), events.Finished)
    assert [w.window for w in only(evs, events.WindowDone)] == [2, 3]
    assert np.array_equal(read_video(out), read_video(tmp_path / "whole.mp4"))


def test_out_of_memory_in_a_window_replans_and_gives_the_same_video(tiny_root, tmp_path):
    """An OOM in window 2 frees memory, re-plans, and redoes that window from the same overlap and seed:
    the finished video equals an uninterrupted run's, frame for frame."""
    from wan_app.media import read_video

    clean = tmp_path / "clean.mp4"
    assert isinstance(last_of(drain(run_long(engine_for(tiny_root, T2V, tmp_path), LongRequest(
        request(tiny_root, T2V), total_frames=17, window=9), out_path=clean))), events.Finished)

    engine = engine_for(tiny_root, T2V, tmp_path)
    state = {"windows": 0, "fired": False}

    def oom_in_window_2(i, expert):
        if state["windows"] == 2 and i == 1 and not state["fired"]:
            state["fired"] = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
    engine.step_hooks.append(oom_in_window_2)
    out = tmp_path / "oom.mp4"
    evs = []
    for ev in run_long(engine, LongRequest(request(tiny_root, T2V), total_frames=17, window=9), out_path=out):
        evs.append(ev)
        if isinstance(ev, events.WindowDone):
            state["windows"] += 1
    assert isinstance(last_of(evs), events.Finished), last_of(evs)
    assert state["fired"] and any("out of gpu memory" in n.message.lower() for n in only(evs, events.Notice))
    assert len(only(evs, events.PlanReady)) == 2
    assert np.array_equal(read_video(out), read_video(clean))


@pytest.mark.parametrize("name", [T2V, TI2V])
def test_ti2v_windows_condition_on_the_overlap_like_its_image_t2v_by_reinjection(tiny_root, tmp_path, name):
    """TI2V 5B is given the overlap latents clean with timestep 0 on their tokens (its trained image
    conditioning); T2V models get plain timesteps (the overlap is re-injected noised instead)."""
    engine = engine_for(tiny_root, name, tmp_path)
    seen = []

    def spy(module, args, kwargs):
        seen.append(kwargs["timestep"].detach().clone())
    hooks = []
    orig_load = engine.host.load

    def load_and_spy(*args):
        orig_load(*args)
        hooks.append(engine.host.components.transformer.register_forward_pre_hook(spy, with_kwargs=True))
    engine.host.load = load_and_spy
    evs = drain(run_long(engine, LongRequest(request(tiny_root, name, steps=2), total_frames=13, window=9),
                         out_path=tmp_path / "c.mp4"))
    assert isinstance(last_of(evs), events.Finished), last_of(evs)
    calls_per_window = 2 * 2                        # steps × (cond, uncond)
    first, second = seen[:calls_per_window], seen[calls_per_window:]
    assert len(second) == calls_per_window
    assert all(t.ndim == 1 for t in first)          # window 0 starts from text: nothing to condition on
    if name == TI2V:
        # 64×64 with the 16× Wan2.2 VAE: 4×4 latents → 2×2 = 4 tokens per latent frame; the 5-frame
        # overlap is (5−1)/4+1 = 2 latent frames → the first 8 tokens are held at t = 0
        for t in second:
            assert t.ndim == 2 and t.shape[1] == 3 * 4
            assert torch.all(t[:, :8] == 0) and torch.all(t[:, 8:] > 0)
    else:
        assert all(t.ndim == 1 and torch.all(t > 0) for t in second)
