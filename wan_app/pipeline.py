"""One job pipeline: a job is a list of windows; a short clip is a job of one window without a journal.

    lock → plan → load → for each window (encode prompt → condition → sample → decode → append) → finish

One OOM policy (a CUDA OOM re-plans once per job and the window restarts from the same overlap and seed,
so the retry gives the frames it would have given), one error mapping (expected failures become Failed /
Cancelled events, never exceptions), one metadata builder. Inner steps report through `emit`.

Where the frames go is the job's sink: a clip is held in RAM and written atomically at the end (Stop
writes nothing); a long video appends each finished window to the mp4 on disk and journals what the next
window needs (wan_app.longvideo, wan_app.journal), so a crash loses at most the window in flight.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__, events, i2v, media, outputs, sampler, stepcache
from .colormatch import warm_up
from .errors import Cancelled, UserError
from .journal import SUFFIX, Journal, journal_path, load_overlap, lock_job, overlap_path, save_overlap, video_path
from .longvideo import LongRequest, join_window, new_frames, plan_windows, prompt_for, window_seed
from .media import GrowingVideo, write_mp4
from .request import Request, check_total_frames

log = logging.getLogger(__name__)

Emit = Callable[[events.Event], None]


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass
class Window:
    index: int
    frames: int                  # frames generated, the overlap included
    keep: int                    # frames it adds to the video
    seed: int
    prompt: str


@dataclass
class Job:
    request: Request             # resolved; frames = the longest window
    spec: object                 # catalog.ModelSpec
    files: object                # checkpoints.ModelFiles
    plan: object                 # plan_types.Plan: the plan that runs (PlanReady carries it)
    windows: list[Window]
    sink: "ClipSink | LongSink"
    loras: list = field(default_factory=list)     # wan_app.lora.LoraUse: which file on which expert
    long: LongRequest | None = None       # None: a plain clip
    overlap: np.ndarray | None = None     # uint8 frames the next window continues
    start: int = 0                        # first window to run (resume)
    forwards_before: int = 0              # transformer forwards of the windows a resumed job already has
    skipped_before: int = 0
    cache: dict | None = None             # the last window's step cache, described (sidecar JSON)

    @property
    def path(self) -> Path:
        return self.sink.path


# ---- sinks -------------------------------------------------------------------------------------------
class ClipSink:
    """A clip: frames in RAM, one atomic mp4 (+ sidecar JSON) when the job finishes."""

    def __init__(self, path: Path, fps: int):
        self.path, self.fps = Path(path), fps
        self.frames: list[np.ndarray] = []
        self.frames_written = 0

    def append(self, k: int, frames: np.ndarray, next_overlap, meta: dict) -> None:
        self.frames.append(frames)

    def finish(self, meta: dict) -> None:
        frames = self.frames[0] if len(self.frames) == 1 else np.concatenate(self.frames)
        write_mp4(frames, self.path, self.fps, meta)
        self.frames_written = len(frames)

    def stopped_message(self) -> str:
        return "Stopped."

    def playable(self) -> Path | None:
        return None

    def failure_hint(self, oom: bool) -> str:
        return ("lower the size or frame count, or force more block swap in Settings" if oom
                else "see the console log for details")


class LongSink:
    """A long video: each window appended to the mp4 on disk (playable after every append) and journaled
    with the exact frames the next window starts from."""

    def __init__(self, journal: Journal, video: GrowingVideo):
        self.journal, self.video = journal, video
        self.path = Path(journal.video)

    @property
    def frames_written(self) -> int:
        return self.video.frames_written

    def append(self, k: int, frames: np.ndarray, next_overlap, meta: dict) -> None:
        j = self.journal
        if next_overlap is not None:
            # Saved before the append: whatever moment a crash picks, a video with k+1 windows always has
            # the exact frames window k+1 starts from beside it.
            save_overlap(self.path, k + 1, next_overlap)
        self.video.append(frames, metadata=meta)
        j.windows_done, j.segments, j.frames_done = k + 1, self.video.segments, self.video.frames_written
        j.save()
        overlap_path(self.path, k).unlink(missing_ok=True)

    def finish(self, meta: dict) -> None:
        self.video.discard_parts()
        self.journal.discard()

    def stopped_message(self) -> str:
        j = self.journal
        if not j.frames_done:
            return "Stopped."
        return (f"Stopped after {j.windows_done} of {len(j.windows)} windows ({j.frames_done} frames); "
                "resume to continue.")

    def playable(self) -> Path | None:
        return self.path if self.video.frames_written and self.path.exists() else None

    def failure_hint(self, oom: bool) -> str:
        return (f"the finished windows are in {self.path}; continue with "
                f"`python app.py extend --resume {self.path}`"
                + (" after freeing memory or with a smaller window" if oom else ""))


# ---- building jobs -----------------------------------------------------------------------------------
def _floor_4n1(v: int) -> int:
    return max(1, (v - 1) // 4 * 4 + 1)


def clip_job(engine, req: Request, out_path: Path | None, overrides) -> Job:
    plan, req, spec, files, uses = engine._plan_clip(req, overrides)
    path = media.check_output_path(out_path) if out_path else outputs.new_output_path(
        outputs.ensure_writable(engine.outputs_dir), req.prompt, req.seed)
    outputs.ensure_writable(path.parent)
    windows = [Window(0, req.frames, req.frames, req.seed, req.prompt)]
    return Job(req, spec, files, plan, windows, ClipSink(path, req.fps), loras=uses)


def long_layout(engine, lreq: LongRequest, overrides, files_required: bool = True, runnable: bool = True):
    """(base request resolved, window, overlap, windows) for a long job, checked before anything loads.
    Not `runnable`: a model that cannot fit at all gives windows None (the 1-frame plan says why)."""
    if not isinstance(lreq.color_match, (int, float)) or not 0 <= lreq.color_match <= 1:
        raise UserError("color_match", f"{lreq.color_match} is out of range", "use 0 (off) to 1 (full)")
    check_total_frames(lreq.total_frames)
    # A 1-frame plan resolves the request (seed, size, fps) and gives the plan's frame limit.
    from_video = lreq.input_video is not None
    probe, base, spec, _, _ = engine._plan_clip(replace(lreq.base, frames=1), overrides, runnable=runnable,
                                                files_required=files_required, image_from_video=from_video)
    if probe.blocker:
        return base, None, None, None
    cap = _floor_4n1(probe.max_frames)
    window = lreq.window if lreq.window is not None else min(spec.frames, cap)
    if isinstance(window, int) and window > cap:
        raise UserError("window", f"{window} frames at {base.width}x{base.height} do not fit this machine",
                        f"use a window of at most {cap} frames")
    overlap = 5 if lreq.overlap is None else lreq.overlap
    windows = plan_windows(lreq.total_frames, window, overlap, first_from_video=lreq.input_video is not None)
    return base, window, overlap, windows


def _windows_of(lreq: LongRequest, frames: list[int]) -> list[Window]:
    keep = new_frames(frames, lreq.overlap, lreq.total_frames, lreq.input_video is not None)
    return [Window(k, f, keep[k], window_seed(lreq.base.seed, k), prompt_for(lreq.base.prompt, k))
            for k, f in enumerate(frames)]


def long_job(engine, lreq: LongRequest, out_path: Path | None, overrides, locks=None) -> Job:
    """Validate, read the input's overlap, plan the longest window, create the output and its journal.
    `locks` (an ExitStack) holds the job's lock for as long as the job runs."""
    base, window, overlap, frames = long_layout(engine, lreq, overrides)
    from_video = lreq.input_video is not None
    first_overlap = None
    if from_video:
        first_overlap = _check_video(Path(lreq.input_video), base.width, base.height, base.fps, overlap)
    plan, req, spec, files, uses = engine._plan_clip(replace(base, frames=max(frames)), overrides,
                                                     image_from_video=from_video)
    lreq = replace(lreq, base=replace(base, frames=None), window=window, overlap=overlap,
                   input_video=Path(lreq.input_video) if from_video else None)
    if out_path is None:
        out_path = outputs.new_output_path(outputs.ensure_writable(engine.outputs_dir),
                                           prompt_for(base.prompt, 0), base.seed)
    path = media.check_output_path(out_path)
    outputs.ensure_writable(path.parent)
    if locks is not None:
        locks.enter_context(lock_job(path))
    if journal_path(path).exists():
        raise UserError("out", f"{path.name} is an unfinished long video",
                        f"resume it (python app.py extend --resume {path}) or choose another output")
    journal = Journal(video=str(path.resolve()), request=lreq.to_dict(), windows=frames)
    sink = LongSink(journal, GrowingVideo(path, base.fps))
    job = Job(req, spec, files, plan, _windows_of(lreq, frames), sink, loras=uses, long=lreq,
              overlap=first_overlap)
    if from_video:
        sink.video.append(media.iter_video(lreq.input_video, base.width, base.height, base.fps),
                          metadata=metadata(job, None, 0))
        journal.input_frames = journal.frames_done = sink.video.frames_written
        journal.segments = sink.video.segments
        save_overlap(path, 0, first_overlap)
    journal.frames_total = journal.input_frames + lreq.total_frames
    journal.save()
    return job


def resumed_job(engine, job_path: Path, locks=None) -> Job:
    """Rebuild a long job from its journal; reconcile a crash that fell between an append and the journal.
    A second resume of the same job (another process, or this one) is refused while the first runs."""
    if locks is not None:
        locks.enter_context(lock_job(video_path(job_path) if job_path.name.endswith(SUFFIX) else job_path))
    journal = Journal.load(job_path)
    lreq = LongRequest.from_dict(journal.request)
    path = Path(journal.video)
    plan, req, spec, files, uses = engine._plan_clip(replace(lreq.base, frames=max(journal.windows)), None,
                                                     image_from_video=lreq.input_video is not None)
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
    k = journal.windows_done
    needs_overlap = k < n and (k > 0 or lreq.input_video is not None)
    overlap = load_overlap(path, k) if needs_overlap else None
    before = int((video.metadata or {}).get("forwards", 0)) if k else 0
    skipped_before = int((video.metadata or {}).get("forwards_skipped", 0)) if k else 0
    return Job(req, spec, files, plan, _windows_of(lreq, journal.windows), LongSink(journal, video),
               loras=uses, long=lreq, overlap=overlap, start=k, forwards_before=before,
               skipped_before=skipped_before)


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


# ---- metadata ----------------------------------------------------------------------------------------
def metadata(job: Job, sampled: sampler.Sampled | None, frames: int, forwards: int = 0,
             placement=None, complete: bool = False, seconds: float | None = None, skipped: int = 0) -> dict:
    """What every video records: the request, the plan that ran and the transformer forwards it took."""
    req = job.request
    meta = {
        "app": "wan-studio", "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": job.spec.id, "model_name": job.spec.name,
        "request": req.to_dict(),
        "frames": frames, "width": req.width, "height": req.height, "fps": req.fps,
        "files": _file_names(job.files.describe()),
        "plan": job.plan.to_dict(),
        "forwards": forwards, "forwards_skipped": skipped,
        "cache": job.cache or {"kind": "off"},
        "loras": [u.metadata() for u in job.loras],
    }
    for name in ("image", "last_image"):
        if getattr(req, name):
            meta[name] = i2v.describe_image(getattr(req, name))
    if sampled is not None:
        meta["timesteps"] = [int(t) for t in sampled.schedule.timesteps]
    if placement is not None:
        meta["attention"] = placement.attention_backend
    if job.long is not None:
        j = job.sink.journal
        meta["request"] = replace(req, prompt=job.long.base.prompt, seed=job.long.base.seed,
                                  frames=j.frames_total).to_dict()
        meta["long"] = {**{k: v for k, v in job.long.to_dict().items() if k != "base"},
                        "windows": j.windows, "input_frames": j.input_frames, "complete": complete}
    if seconds is not None:
        meta["seconds"] = seconds
    # A shared video must not tell where its maker keeps files: names only, never absolute paths.
    r = meta["request"]
    for name in ("image", "last_image"):
        if r.get(name):
            r[name] = Path(r[name]).name
    r["loras"] = [{**e, "file": Path(e["file"]).name} for e in r.get("loras", [])]
    return meta


def _file_names(described: dict) -> dict:
    return {k: ({**v, "path": Path(v["path"]).name} if isinstance(v, dict) and "path" in v else v)
            for k, v in described.items()}


# ---- running ----------------------------------------------------------------------------------------
class _Eta:
    """Seconds left in the whole job: the steps left in this window and in every later one at the measured
    seconds per step, plus what the last finished window spent outside its steps: before them (prompt,
    conditioning) for each later window, after them (decode, append) for this one and each later one.
    Until a window has finished, its decode at the last measured time stands for both."""

    def __init__(self, job: Job, codec):
        self.job, self.codec = job, codec
        self.per_step: float | None = None
        self.before: float | None = None       # seconds of the last finished window before its first step
        self.after: float | None = None        # and after its last step
        self._start = self._sampling_start = self._last_step = None

    def window_done(self) -> None:
        if self._last_step is not None:
            self.before = max(0.0, self._sampling_start - self._start)
            self.after = max(0.0, time.perf_counter() - self._last_step)

    def for_window(self, w: Window):
        steps = self.job.request.steps
        later = self.job.windows[w.index + 1:]
        self._start, self._sampling_start, self._last_step = time.perf_counter(), None, None

        def decode(win) -> float:
            return self.codec.decode_seconds(self.job.spec.latent_shape(
                win.frames, self.job.request.width, self.job.request.height)) or 0.0

        def eta(done: int, total: int, elapsed: float) -> float:
            now = time.perf_counter()
            self.per_step, self._last_step = elapsed / done, now
            if self._sampling_start is None:
                self._sampling_start = now - elapsed
            left = (total - done) * self.per_step + len(later) * steps * self.per_step
            left += self.after if self.after is not None else decode(w)
            for win in later:
                left += self.before + self.after if self.after is not None else decode(win)
            return left
        return eta


def run_window(engine, job: Job, w: Window, emit: Emit, cancel=None, eta=None):
    """Encode the prompt, condition, sample and decode one window; returns its frames (overlap included)."""
    host = engine.host
    req = replace(job.request, prompt=w.prompt, frames=w.frames, seed=w.seed)
    n = len(job.windows)
    tag = dict(window=w.index, windows=n) if job.long is not None else {}
    emit(events.Progress("encode", message="encoding the prompt" if n == 1 else
                         f"window {w.index + 1}/{n}: encoding the prompt", **tag))
    negative = req.negative_prompt if sampler.needs_negative_prompt(req) else None
    cond, uncond = host.encode(req.prompt, negative)
    cut = host.tokens_cut(req.prompt)
    if cut:
        emit(events.Notice(f"The prompt is {cut} tokens longer than umT5's {job.spec.text_len}; "
                           f"the last {cut} tokens were left out."))
    latents = sampler.initial_noise(job.spec, req)
    conditioning = _conditioning(engine, job, w, req, latents, emit, tag)
    cache = stepcache.for_request(req, job.spec, req.cache, req.cache_threshold, batched=job.plan.cfg_batched,
                                  image=isinstance(conditioning, sampler.CleanFirstLatents))
    sampled = sampler.sample(req, job.spec, job.plan, host.placement, latents, cond, uncond, emit,
                             conditioning, cancel, engine.step_hooks, eta,
                             window=tag.get("window"), windows=tag.get("windows"), cache=cache)
    job.cache = cache.describe() if cache is not None else None
    if not torch.isfinite(sampled.latents).all():
        raise BrokenOutput("the model produced NaN or infinite values while sampling",
                           "the weights may be damaged (re-download them), or fp16 overflowed: try bf16 or fp8")
    emit(events.Progress("decode", message="decoding with the VAE", **tag))
    host.placement.before_decode()
    frames = host.codec.decode(sampled.latents)
    if frames.size and frames.min() == frames.max():
        raise BrokenOutput(f"every decoded pixel has the value {int(frames.min())}: the VAE gave a blank video",
                           "the VAE file may be damaged or of another model; re-download it")
    return frames, sampled


def _conditioning(engine, job: Job, w: Window, req: Request, latents, emit: Emit, tag: dict):
    """How this window is conditioned: on the frames it continues (Extend), on the request's image
    (I2V, FLF2V, TI2V with an image), both, or neither (plain text-to-video)."""
    host, spec = engine.host, job.spec
    continuing = job.overlap is not None
    image = last = None
    if continuing and spec.image_input != "none":
        # An image model continues through its trained image path: the window's first frame (the first
        # of the frames it continues) is its image; the other overlap frames are re-injected.
        from PIL import Image
        image = Image.fromarray(job.overlap[0])
    elif not continuing and req.image is not None:
        image = i2v.load_image(req.image, "image")
    if req.last_image is not None and w.index == len(job.windows) - 1:
        last = i2v.load_image(req.last_image, "last_image")
    if not continuing and image is None:
        return None
    emit(events.Progress("encode", message="encoding the " + ("frames it continues" if continuing else "image")
                         + " with the VAE", **tag))
    clean = host.codec.encode(job.overlap) if continuing else None
    if spec.image_conditioning == "first_latents" or (continuing and spec.image_input == "none"):
        if spec.image_conditioning == "first_latents":      # TI2V 5B: clean first latents at timestep 0
            if clean is None:
                clean = i2v.ti2v_condition(host.codec, i2v.prepare_image_ti2v(image, req.width, req.height))
            return sampler.CleanFirstLatents(clean)
        # T2V continuation. The overlap's noise is the slice of the window's own seeded noise that it
        # replaces: fixed for the whole window, reproducible from the seed; at σ≈1 it changes little.
        return sampler.OverlapReinjection(clean, latents[:, :, :clean.shape[2]].clone())
    first = i2v.prepare_image(image, req.width, req.height)
    last_t = i2v.prepare_image(last, req.width, req.height) if last is not None else None
    y = i2v.image_condition(host.codec, first, w.frames, last_t)
    clip = None
    if spec.clip:
        emit(events.Progress("encode", message="encoding the image with CLIP", **tag))
        clip = _clip_features(host, [i2v.image_tensor(image)] + ([i2v.image_tensor(last)] if last else []),
                              job.plan.device)
    inner = sampler.OverlapReinjection(clean, latents[:, :, :clean.shape[2]].clone()) if continuing else None
    return sampler.ImageToVideo(y, clip, inner)


def _clip_features(host, images, device):
    """CLIP runs before sampling and leaves the device again (the planner counts it in the encode phase)."""
    model = host.components.clip
    model.to(device)
    try:
        return i2v.image_clip(model, images).cpu()
    finally:
        model.to("cpu")


class BrokenOutput(Exception):
    """Sampling or decoding gave a video that is not a picture (NaN, one colour): a failed run, not a file."""

    def __init__(self, problem: str, hint: str):
        super().__init__(problem)
        self.hint = hint


def run_job(engine, make_job: Callable, emit: Emit, cancel) -> None:
    """Run a job to its end, reporting everything as events (never raising for expected failures).
    `make_job(locks)` builds the job; what it enters into `locks` is held until the job ends."""
    t_start = time.perf_counter()
    job = None
    try:
        with engine.busy(), contextlib.ExitStack() as locks:
            job = make_job(locks)
            _run_windows(engine, job, emit, cancel, t_start)
    except UserError as e:
        emit(events.Failed(f"{e.field}: {e.problem}", e.fix))
    except Cancelled:
        emit(events.Cancelled(job.sink.stopped_message() if job else "Stopped.",
                              path=job.sink.playable() if job else None))
    except BrokenOutput as e:
        emit(events.Failed(f"The run failed: {e}", e.hint))
    except Exception as e:  # noqa: BLE001 - the UI must get a message, not a dead stream
        log.exception("run failed")
        oom = is_oom(e)
        if job is None:
            emit(events.Failed(f"{type(e).__name__}: {e}", "see the console log for details"))
            return
        what = ("Out of GPU memory, even after re-planning." if oom and job.long is None else
                "Out of memory" if oom else f"{type(e).__name__}: {e}")
        if job.long is not None:
            what += f" in window {job.sink.journal.windows_done + 1}"
        emit(events.Failed(what, job.sink.failure_hint(oom)))


def _warn_if_ram_is_taken(plan, emit: Emit) -> None:
    """The plan budgets RAM from the machine's size (so it is the same plan every time); when other
    programs hold more than the share it leaves them, say so before loading rather than swap silently."""
    import psutil
    free_gb = psutil.virtual_memory().available / 1e9
    if plan.est_ram_gb > free_gb:
        emit(events.Notice(f"This run needs about {plan.est_ram_gb:.1f} GB of RAM and {free_gb:.1f} GB is free "
                           "now: close other programs, or the system may swap."))


def _run_windows(engine, job: Job, emit: Emit, cancel, t_start: float) -> None:
    emit(events.PlanReady(job.plan, list(job.plan.reasons)))
    if not engine.hardware.simulated_machine:
        _warn_if_ram_is_taken(job.plan, emit)
    n = len(job.windows)
    if job.long is not None and job.long.color_match > 0:
        warm_up()
    last_meta = job.sink.video.metadata if job.long is not None else None
    forwards, skipped = job.forwards_before, job.skipped_before
    if job.start < n:
        engine.host.load(job.files, job.plan, emit, job.loras)
    eta = _Eta(job, engine.host.codec) if engine.host.codec else None
    retried = False
    for w in job.windows[job.start:]:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        while True:
            try:
                frames, sampled = run_window(engine, job, w, emit, cancel, eta.for_window(w))
                break
            except Exception as exc:  # noqa: BLE001 - only a first OOM is retried; the window restarts
                # from the same overlap and seed, so the retry gives the frames it would have given.
                if not is_oom(exc) or retried or not _replan_after_oom(engine, job, emit):
                    raise
                retried = True
                engine.host.load(job.files, job.plan, emit, job.loras)
        forwards += sampled.forwards
        skipped += sampled.skipped
        frames = join_window(frames, job.overlap, job.long.color_match if job.long else 0.0, w.keep)
        last = w.index + 1 == n
        next_overlap = None
        if not last:
            o = job.long.overlap
            tail = frames if job.overlap is None else np.concatenate([job.overlap, frames])
            next_overlap = np.ascontiguousarray(tail[-o:])
        if job.long is not None:
            emit(events.Progress("write", message=f"window {w.index + 1}/{n}: appending {len(frames)} frames",
                                 window=w.index, windows=n))
        else:
            emit(events.Progress("write", message="writing the mp4"))
        if cancel is not None and cancel.is_set():
            raise Cancelled()           # Stop pressed while decoding: nothing is written
        seconds = round(time.perf_counter() - t_start, 2) if last else None
        last_meta = metadata(job, sampled, job.sink.frames_written + len(frames), forwards,
                             engine.host.placement, complete=last, seconds=seconds, skipped=skipped)
        job.sink.append(w.index, frames, next_overlap, last_meta)
        job.overlap = next_overlap
        del frames
        if eta is not None:
            eta.window_done()
        if job.long is not None:
            emit(events.WindowDone(w.index, n, job.sink.journal.frames_done, job.path))
    if last_meta is None:      # a resumed job whose windows were all done already
        last_meta = metadata(job, None, job.sink.frames_written, forwards, complete=True, skipped=skipped)
    last_meta.setdefault("seconds", round(time.perf_counter() - t_start, 2))
    if job.long is not None:
        emit(events.Progress("write", message="finishing the video"))
    job.sink.finish(last_meta)
    emit(events.Finished(job.path, last_meta, last_meta["seconds"]))


def _replan_after_oom(engine, job: Job, emit: Emit) -> bool:
    """After a CUDA OOM: free everything, ask the planner for a safer plan (more swap, tiling, text
    encoder to CPU), tell the user what changed. False when nothing is left to give."""
    new_plan = engine.replan_after_oom(job)
    engine.host.unload(keep_components=new_plan is not None and new_plan.weight_dtype == job.plan.weight_dtype
                       and new_plan.weight_dtype != "fp8")
    if new_plan is None:
        return False
    emit(events.Notice("Ran out of GPU memory; retrying once with a safer plan: "
                       + "; ".join(r for r in new_plan.reasons if r not in job.plan.reasons)))
    job.plan = new_plan
    emit(events.PlanReady(new_plan, list(new_plan.reasons)))
    return True
