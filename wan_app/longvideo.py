"""Long videos (Extend): window after window, each continuing the last frames of what exists.

The models are trained on 81 frames (TI2V 5B: 121). A longer video is made of windows that share O = 4m+1
frames (default 5) with what came before:

1. the last O frames are re-encoded with the VAE as the start of a new clip: O frames → (O−1)/4+1 latent
   frames, because the causal VAE packs the first frame alone and then 4 frames per latent frame;
2. before every denoising step those latents are put back, noised to the step's σ with a fixed noise
   tensor (flow matching: x = (1−σ)·z + σ·ε), so the rest of the window is denoised *around* them and
   continues their motion. This works for pure text-to-video models, which Wan2GP refuses to extend.
   TI2V 5B (Wan2.2 VAE) instead uses the conditioning it was trained with for its image: the overlap
   latents are given to the model clean, with timestep 0 on their tokens (Engine.denoise `condition`);
3. after the last step the overlap latents are put back clean (σ = 0), the window is decoded, its colours
   are matched to the overlap (wan_app.colormatch), the O overlap frames are dropped (not duplicated) and
   the rest is appended to the output mp4 on disk (media.GrowingVideo).

Only one window of frames is ever held in RAM. After each window a journal (wan_app.journal) records
the exact overlap frames and where the job stands, so a crash, an OOM or Stop leaves a playable video
of the finished windows and `resume_long` continues bit-exactly: each window's seed is derived from the
base seed and the window index, never from RNG state that a restart would lose.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import events, media, outputs
from .colormatch import match_color, warm_up
from .engine import is_oom
from .errors import Cancelled, UserError
from .journal import SUFFIX, Journal, journal_path, load_overlap, overlap_path, save_overlap
from .media import GrowingVideo
from .request import Request
from .sampling import noise_to_sigma

log = logging.getLogger(__name__)

DEFAULT_OVERLAP = 5


@dataclass
class LongRequest:
    base: Request                 # model, prompt (one line per window; the last line repeats), size, seed...
    total_frames: int             # length of the whole result (from text) / frames to add (extend)
    window: int | None = None     # frames per window (4n+1); default: training length capped by the plan
    overlap: int | None = None    # O = 4m+1 frames shared with the previous window; default 5
    color_match: float = 1.0      # 0 = off; strength of the LAB mean/std match
    input_video: Path | None = None   # extend this video instead of starting from text

    def to_dict(self) -> dict:
        return {"base": self.base.to_dict(), "total_frames": self.total_frames, "window": self.window,
                "overlap": self.overlap, "color_match": self.color_match,
                "input_video": str(self.input_video) if self.input_video else None}

    @classmethod
    def from_dict(cls, d: dict) -> "LongRequest":
        return cls(base=Request.from_dict(d["base"]), total_frames=int(d["total_frames"]),
                   window=d.get("window"), overlap=d.get("overlap"),
                   color_match=float(d.get("color_match", 1.0)),
                   input_video=Path(d["input_video"]) if d.get("input_video") else None)


@dataclass
class ResumableJob:
    path: Path                    # the output mp4 (playable: the finished windows)
    prompt: str
    frames_done: int
    frames_total: int
    updated: datetime


# ---- pure arithmetic --------------------------------------------------------------------------
def _is_4n1(v) -> bool:
    return isinstance(v, int) and v >= 1 and (v - 1) % 4 == 0


def plan_windows(total_frames: int, window: int, overlap: int, first_from_video: bool) -> list[int]:
    """Frames generated per window. From text the first window is a plain clip; every other window
    (and the first one when extending a video) starts with the `overlap` frames it continues and adds
    `window − overlap` new ones. The last window is only as long as needed, rounded up to the VAE's 4n+1
    grid; the few frames past `total_frames` are generated and then left out of the video."""
    if not _is_4n1(overlap):
        raise UserError("overlap", f"{overlap} is not of the form 4m+1",
                        "use 1, 5, 9, … (the VAE packs 4 frames per latent frame after the first)")
    if not _is_4n1(window):
        raise UserError("window", f"{window} is not of the form 4n+1", "use e.g. 33, 49 or 81")
    if window < overlap + 4:
        raise UserError("window", f"{window} frames leave no room for new frames after an overlap of "
                        f"{overlap}", f"use a window of at least {overlap + 4} frames or a smaller overlap")
    if not isinstance(total_frames, int) or total_frames < 1:
        raise UserError("frames", f"{total_frames} is not a positive number of frames",
                        "ask for at least 1 frame")
    windows: list[int] = []
    remaining = total_frames
    if not first_from_video:
        first = min(window, (remaining - 1 + 3) // 4 * 4 + 1)
        windows.append(first)
        remaining -= first
    while remaining > 0:
        new = min(window - overlap, (remaining + 3) // 4 * 4)
        windows.append(overlap + new)
        remaining -= new
    return windows


def new_frames(windows: list[int], overlap: int, total_frames: int, first_from_video: bool) -> list[int]:
    """Frames each window adds to the video: its length minus the overlap (none for a first window from
    text), the last one cut to reach exactly `total_frames`."""
    out, remaining = [], total_frames
    for k, w in enumerate(windows):
        add = min(w if (k == 0 and not first_from_video) else w - overlap, remaining)
        out.append(add)
        remaining -= add
    return out


def window_seed(seed: int, window: int) -> int:
    """Window 0 uses the seed itself (a long video starts like the short clip with that seed); later
    windows a value derived from (seed, window) with numpy's SeedSequence hash, so a resumed job draws
    exactly the noise an uninterrupted one would, without any saved RNG state."""
    if window == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(window)]).generate_state(1, dtype=np.uint32)[0])


def prompt_for(prompt: str, window: int) -> str:
    """One prompt line per window; the last line repeats for the windows after it."""
    lines = [ln.strip() for ln in prompt.splitlines() if ln.strip()]
    return lines[min(window, len(lines) - 1)] if lines else prompt


# ---- one window -------------------------------------------------------------------------------
def _with_windows(gen, windows: int | None):
    """Relay a generator's events, stamping the window count on Progress; returns its return value."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if isinstance(ev, events.Progress) and ev.windows is None:
            ev.windows = windows
        yield ev


def overlap_injector(clean: torch.Tensor, noise: torch.Tensor):
    """inject(step, σ, x) for Engine.denoise: the first latent frames of x become the overlap latents
    noised to σ. The same `noise` at every step keeps them on one straight flow path from noise to the
    clean overlap, as if the model itself had denoised them; at σ = 0 they are exactly the overlap."""
    n = clean.shape[2]
    on_device: dict = {}

    def inject(step: int, sigma: float, x: torch.Tensor) -> torch.Tensor:
        if not on_device:
            on_device["z"] = clean.to(x.device, x.dtype)
            on_device["e"] = noise.to(x.device, x.dtype)
        x = x.clone()   # the solver may keep a reference to the tensor it returned last step
        x[:, :, :n] = noise_to_sigma(on_device["z"], on_device["e"], sigma)
        return x
    return inject


def uses_image_conditioning(spec) -> bool:
    """Wan2.2 TI2V (the 48-channel Wan2.2 VAE models) was trained to take clean first-frame latents at
    timestep 0 per token; the Wan2.1-VAE T2V models were not, so they get noised re-injection."""
    return spec.vae == "wan2.2"


def generate_window(engine, prep, comps, placement, cond, uncond, overlap: np.ndarray | None,
                    cancel: threading.Event | None = None, window: int | None = None,
                    windows: int | None = None):
    """Denoise and decode one window, continuing `overlap` (uint8 [O,H,W,3]) when given. A generator of
    events returning (frames uint8 [prep.request.frames,H,W,3] including the overlap, schedule)."""
    latents = engine.prepare_latents(prep.spec, prep.request)
    inject = condition = None
    if overlap is not None:
        yield events.Progress("encode", message="encoding the overlap with the VAE", window=window,
                              windows=windows)
        clean = engine.encode_frames(comps, overlap)
        if uses_image_conditioning(prep.spec):
            condition = clean
        else:
            # The overlap's noise is the slice of the window's own seeded noise that it replaces: fixed
            # for the whole window, reproducible from the seed; at σ≈1 the injection changes little.
            inject = overlap_injector(clean, latents[:, :, :clean.shape[2]].clone())
    schedule, latents = yield from _with_windows(
        engine.denoise(prep, comps, placement, latents, cond, uncond, cancel, inject=inject, window=window,
                       condition=condition), windows)
    yield events.Progress("decode", message="decoding with the VAE", window=window, windows=windows)
    placement.before_decode()
    return engine.decode(comps, latents), schedule


def join_window(frames: np.ndarray, overlap: np.ndarray | None, color_match: float, keep: int) -> np.ndarray:
    """The frames a window adds to the video: colours matched to the overlap it continues (measured on
    the window's own copy of the overlap), the overlap dropped, cut to `keep` frames."""
    if overlap is None:
        return frames[:keep]
    o = len(overlap)
    if color_match > 0:
        frames = match_color(frames[o:o + keep], measured=frames[:o], reference=overlap, strength=color_match)
        return frames
    return frames[o:o + keep]


# ---- the job ----------------------------------------------------------------------------------
@dataclass
class _Job:
    lreq: LongRequest        # seed chosen, window and overlap filled in
    prep: object             # engine.Prepared for the longest window
    journal: Journal
    video: GrowingVideo
    overlap: np.ndarray | None
    keep: list[int]

    @property
    def path(self) -> Path:
        return Path(self.journal.video)


def _floor_4n1(v: int) -> int:
    return max(1, (v - 1) // 4 * 4 + 1)


def _check_video(path: Path, width: int, height: int, fps: int, overlap: int) -> np.ndarray:
    """The last `overlap` frames of the input at the model's size and fps; UserError if unreadable or
    too short. Decodes the whole input but holds only those frames."""
    if not path.is_file():
        raise UserError("video", f"{path} does not exist", "choose a video file to extend")
    last = media.read_video(path, width, height, fps, last_frames=overlap)
    if len(last) < overlap:
        raise UserError("video", f"{path.name} has only {len(last)} frames at {fps} fps; extending it needs "
                        f"at least the {overlap} overlap frames", "choose a longer video or a smaller overlap")
    return last


def _input_frames(path: Path, width: int, height: int, fps: int) -> Iterator[np.ndarray]:
    """The input video one frame at a time, so a long input never sits in RAM."""
    return media.iter_video(path, width, height, fps)


def _metadata(engine, job: _Job, frames: int, wprep=None, schedule=None, placement=None,
              complete: bool = False) -> dict:
    base = job.lreq.base
    if wprep is not None:
        meta = engine.metadata(wprep, schedule, placement)
    else:
        from . import __version__
        meta = {"app": "wan-studio", "version": __version__, "model": job.prep.spec.id,
                "model_name": job.prep.spec.name, "width": base.width, "height": base.height, "fps": base.fps}
    meta["request"] = replace(base, frames=job.journal.frames_total).to_dict()
    meta["frames"] = frames
    meta["long"] = {**{k: v for k, v in job.lreq.to_dict().items() if k != "base"},
                    "windows": job.journal.windows, "input_frames": job.journal.input_frames,
                    "complete": complete}
    return meta


def _start(engine, lreq: LongRequest, out_path: Path | None) -> _Job:
    """Everything before the models load: validate, read the input's overlap, create the output."""
    if not isinstance(lreq.color_match, (int, float)) or not 0 <= lreq.color_match <= 1:
        raise UserError("color_match", f"{lreq.color_match} is out of range", "use 0 (off) to 1 (full)")
    # A 1-frame check resolves the request (seed, size, fps) and gives the plan's frame limit here.
    probe = engine.check_inputs(replace(lreq.base, frames=1))
    base, spec, plan = probe.request, probe.spec, probe.plan
    cap = _floor_4n1(plan.max_frames)
    window = lreq.window if lreq.window is not None else min(spec.frames, cap)
    if isinstance(window, int) and window > cap:
        raise UserError("window", f"{window} frames at {base.width}x{base.height} do not fit this machine",
                        f"use a window of at most {cap} frames")
    overlap = DEFAULT_OVERLAP if lreq.overlap is None else lreq.overlap
    from_video = lreq.input_video is not None
    windows = plan_windows(lreq.total_frames, window, overlap, first_from_video=from_video)
    first_overlap = None
    if from_video:
        first_overlap = _check_video(Path(lreq.input_video), base.width, base.height, base.fps, overlap)
    prep = engine.check_inputs(replace(base, frames=max(windows)), refresh=False)
    lreq = replace(lreq, base=replace(base, frames=None), window=window, overlap=overlap,
                   input_video=Path(lreq.input_video) if from_video else None)

    if out_path is None:
        out_path = outputs.new_output_path(outputs.ensure_writable(engine.outputs_dir),
                                           prompt_for(base.prompt, 0), base.seed)
    path = Path(out_path)
    outputs.ensure_writable(path.parent)
    if journal_path(path).exists():
        raise UserError("out", f"{path.name} is an unfinished long video",
                        f"resume it (python app.py extend --resume {path}) or choose another output")
    journal = Journal(video=str(path.resolve()), request=lreq.to_dict(), windows=windows)
    keep = new_frames(windows, overlap, lreq.total_frames, from_video)
    job = _Job(lreq, prep, journal, GrowingVideo(path, base.fps), first_overlap, keep)
    if from_video:
        job.video.append(_input_frames(lreq.input_video, base.width, base.height, base.fps),
                         metadata=_metadata(engine, job, 0))
        journal.input_frames = journal.frames_done = job.video.frames_written
        journal.segments = job.video.segments
        save_overlap(path, 0, first_overlap)
    journal.frames_total = journal.input_frames + lreq.total_frames
    journal.save()
    return job


def _reopen(engine, job_path: Path) -> _Job:
    """Rebuild a job from its journal; reconcile a crash that fell between an append and the journal."""
    journal = Journal.load(job_path)
    lreq = LongRequest.from_dict(journal.request)
    path = Path(journal.video)
    prep = engine.check_inputs(replace(lreq.base, frames=max(journal.windows)))
    if journal.segments == 0 and not media.parts_dir(path).joinpath(GrowingVideo.STATE).exists():
        video = GrowingVideo(path, lreq.base.fps)
    else:
        video = GrowingVideo.open_existing(path)
    n = len(journal.windows)
    if video.segments == journal.segments + 1 and journal.windows_done < n and (
            journal.windows_done + 1 == n or overlap_path(path, journal.windows_done + 1).exists()):
        # The window was appended (and its overlap saved before that) but the journal not yet updated.
        journal.windows_done += 1
        journal.segments, journal.frames_done = video.segments, video.frames_written
        journal.save()
    elif video.segments != journal.segments:
        raise UserError("resume", f"{path.name} has {video.segments} parts but its journal expects "
                        f"{journal.segments}", "start the video again")
    keep = new_frames(journal.windows, lreq.overlap, lreq.total_frames, lreq.input_video is not None)
    needs_overlap = journal.windows_done < n and (journal.windows_done > 0 or lreq.input_video is not None)
    overlap = load_overlap(path, journal.windows_done) if needs_overlap else None
    return _Job(lreq, prep, journal, video, overlap, keep)


def _windows(engine, job: _Job, cancel: threading.Event | None, t_start: float):
    """Generate the remaining windows; returns the final metadata (also in the mp4 and its sidecar)."""
    j, lreq, prep = job.journal, job.lreq, job.prep
    n, o = len(j.windows), lreq.overlap
    yield events.PlanReady(prep.plan, list(prep.plan.reasons))
    if lreq.color_match > 0:
        warm_up()
    meta = job.video.metadata or _metadata(engine, job, job.video.frames_written, complete=True)
    if j.windows_done < n:
        comps, placement = yield from engine.load(prep)
    retried = False
    for k in range(j.windows_done, n):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        wreq = replace(prep.request, prompt=prompt_for(lreq.base.prompt, k), frames=j.windows[k],
                       seed=window_seed(lreq.base.seed, k))
        while True:
            wprep = replace(prep, request=wreq)
            try:
                yield events.Progress("encode", message=f"window {k + 1}/{n}: encoding the prompt",
                                      window=k, windows=n)
                cond, uncond = engine.encode_prompt(comps, placement, wreq.prompt, wreq.negative_prompt)
                frames, schedule = yield from generate_window(engine, wprep, comps, placement, cond, uncond,
                                                              job.overlap, cancel, window=k, windows=n)
                break
            except Exception as exc:  # noqa: BLE001 - only a first OOM is retried; the window restarts
                # from the same overlap and seed, so the retry gives the frames it would have given.
                if not is_oom(exc) or retried or not (yield from engine.replan_after_oom(prep)):
                    raise
                retried = True
                comps, placement = yield from engine.load(prep)
        frames = join_window(frames, job.overlap, lreq.color_match, job.keep[k])
        yield events.Progress("write", message=f"window {k + 1}/{n}: appending {len(frames)} frames",
                              window=k, windows=n)
        if k + 1 < n:
            tail = frames if job.overlap is None else np.concatenate([job.overlap, frames])
            next_overlap = np.ascontiguousarray(tail[-o:])
            # Saved before the append: whatever moment a crash picks, a video with k+1 windows always
            # has the exact frames window k+1 starts from beside it.
            save_overlap(job.path, k + 1, next_overlap)
        else:
            next_overlap = None
        last = k + 1 == n
        meta = _metadata(engine, job, job.video.frames_written + len(frames), wprep, schedule, placement,
                         complete=last)
        if last:
            meta["seconds"] = round(time.perf_counter() - t_start, 2)
        job.video.append(frames, metadata=meta)
        j.windows_done, j.segments, j.frames_done = k + 1, job.video.segments, job.video.frames_written
        j.save()
        overlap_path(job.path, k).unlink(missing_ok=True)
        job.overlap = next_overlap
        del frames
        yield events.WindowDone(k, n, j.frames_done, job.path)
    meta.setdefault("seconds", round(time.perf_counter() - t_start, 2))
    return meta


def _drive(engine, make_job, cancel, t_start: float) -> Iterator[events.Event]:
    job = None
    try:
        with engine.busy():
            job = make_job()
            meta = yield from _windows(engine, job, cancel, t_start)
            yield events.Progress("write", message="finishing the video")
            job.video.discard_parts()
            job.journal.discard()
        yield events.Finished(job.path, meta, meta["seconds"])
    except UserError as e:
        yield events.Failed(f"{e.field}: {e.problem}", e.fix)
    except Cancelled:
        yield events.Cancelled(_stopped_message(job), path=_playable(job))
    except Exception as e:  # noqa: BLE001 - the UI must get a message, not a dead stream
        log.exception("long video failed")
        oom = is_oom(e)
        what = "Out of memory" if oom else f"{type(e).__name__}: {e}"
        where = f" in window {job.journal.windows_done + 1}" if job else ""
        hint = "see the console log for details"
        if job is not None:
            hint = (f"the finished windows are in {job.path}; continue with "
                    f"`python app.py extend --resume {job.path}`"
                    + (" after freeing memory or with a smaller window" if oom else ""))
        yield events.Failed(what + where, hint)


def _stopped_message(job: _Job | None) -> str:
    if job is None or not job.journal.frames_done:
        return "Stopped."
    return (f"Stopped after {job.journal.windows_done} of {len(job.journal.windows)} windows "
            f"({job.journal.frames_done} frames); resume to continue.")


def _playable(job: _Job | None) -> Path | None:
    return job.path if job is not None and job.video.frames_written and job.path.exists() else None


# ---- public entry points ----------------------------------------------------------------------
def run_long(engine, lreq: LongRequest, cancel: threading.Event | None = None,
             out_path: Path | None = None) -> Iterator[events.Event]:
    """Make a long video (from text, or extending `lreq.input_video`). Never raises for expected
    failures: they arrive as Failed events. Bad input fails before any model loads."""
    t0 = time.perf_counter()
    return _drive(engine, lambda: _start(engine, lreq, Path(out_path) if out_path else None), cancel, t0)


def resume_long(engine, job: Path, cancel: threading.Event | None = None) -> Iterator[events.Event]:
    """Continue an interrupted long video from its journal. `job`: the output mp4 or its journal."""
    t0 = time.perf_counter()
    return _drive(engine, lambda: _reopen(engine, Path(job)), cancel, t0)


def list_resumable(outputs_dir: str | Path) -> list[ResumableJob]:
    """Unfinished long videos in the outputs folder (and its day folders), newest first."""
    root = Path(outputs_dir)
    if not root.is_dir():
        return []
    jobs = []
    for p in [*root.glob("*" + SUFFIX), *root.glob("*/*" + SUFFIX)]:
        try:
            j = Journal.load(p)
            prompt = j.request["base"]["prompt"]
            updated = datetime.fromisoformat(j.updated)
        except (UserError, KeyError, TypeError, ValueError):
            continue
        jobs.append(ResumableJob(Path(j.video), prompt, j.frames_done, j.frames_total, updated))
    jobs.sort(key=lambda r: r.updated, reverse=True)
    return jobs
