"""Helpers shared by tests."""
from __future__ import annotations


def mapped_ranges(path) -> list[tuple[int, int]]:
    """Address ranges where this process has `path` memory-mapped (Linux /proc/self/maps)."""
    spans = []
    for line in open("/proc/self/maps"):
        parts = line.split()
        if len(parts) >= 6 and parts[5] == str(path):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            spans.append((lo, hi))
    return spans


# ---- the pipeline's building blocks, driven step by step (parity and seam tests) ------------------
def _quiet(event) -> None:
    pass


def clip(engine, req, out_path):
    """A clip job for `req`, planned from the files (nothing loaded, nothing run)."""
    from wan_app.pipeline import clip_job
    return clip_job(engine, req, out_path, None)


def load(engine, job):
    """Load the job's models into the engine's host (reused when already there) and return the host."""
    engine.host.load(job.files, job.plan, _quiet)
    return engine.host


def denoise(engine, job, noise, cond, uncond, conditioning=None):
    """The sampler's final latents for `job` from `noise` (no decode)."""
    from wan_app import sampler
    return sampler.sample(job.request, job.spec, job.plan, engine.host.placement, noise, cond, uncond, _quiet,
                          conditioning).latents


def window_frames(engine, job, seed, overlap=None):
    """Frames of one window (its overlap included) continuing `overlap`, as the pipeline makes them."""
    from wan_app.pipeline import Window, run_window
    job.overlap = overlap
    req = job.request
    frames, _ = run_window(engine, job, Window(0, req.frames, req.frames, seed, req.prompt), _quiet)
    return frames
