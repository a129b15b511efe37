"""Colour drift correction between long-video windows: match LAB mean and standard deviation.

Each window passes its overlap through a VAE round trip and a new denoising run, which nudges colours a
little; over many windows the nudges add up to a visible drift. The classic fix (Reinhard et al., colour
transfer in Lαβ) is a per-channel affine map that gives the new window the statistics of the frames it
continues. The map is *measured* on the overlap region — the same picture in both windows, so any
difference there is drift, not content — and then applied to the whole new window.
"""
from __future__ import annotations

import cv2
import numpy as np

# A flat overlap (one colour) has a std near 0; an unclamped ratio would then blow the new window up.
_MIN_STD = 1e-3
_MAX_GAIN = 4.0


def _lab(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB [F,H,W,3] -> float32 LAB, L in [0,100]. Float input keeps full precision (uint8 LAB
    would quantise a and b to whole steps before the statistics are taken)."""
    f, h, w, _ = frames.shape
    rgb = frames.reshape(f * h, w, 3).astype(np.float32) / 255.0
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(f, h, w, 3)


def warm_up() -> None:
    """OpenCV builds its LAB lookup tables (~5 MB, kept for the life of the process) on the first
    conversion. Doing that before a long job starts puts the job's peak RAM in its first window instead
    of letting it step up in a later one, so the peak is the same for 2 windows or 200."""
    _lab(np.zeros((1, 1, 1, 3), np.uint8))


def lab_stats(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the LAB values of uint8 RGB frames."""
    lab = _lab(frames).reshape(-1, 3).astype(np.float64)
    return lab.mean(axis=0), lab.std(axis=0)


def match_color(frames: np.ndarray, measured: np.ndarray, reference: np.ndarray,
                strength: float = 1.0) -> np.ndarray:
    """Return `frames` with the LAB map that takes `measured`'s statistics onto `reference`'s, blended
    with the original by `strength` (0 = unchanged, 1 = full match). Works frame by frame so the float
    copy never holds more than one frame."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if strength == 0.0:
        return frames
    m_mean, m_std = lab_stats(measured)
    r_mean, r_std = lab_stats(reference)
    gain = np.clip(r_std / np.maximum(m_std, _MIN_STD), 1.0 / _MAX_GAIN, _MAX_GAIN)
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        lab = _lab(frame[None])[0]
        mapped = (lab - m_mean.astype(np.float32)) * gain.astype(np.float32) + r_mean.astype(np.float32)
        lab = lab + np.float32(strength) * (mapped - lab)
        # L and a/b ranges of float LAB; outside them the inverse conversion is undefined.
        lab[..., 0] = np.clip(lab[..., 0], 0.0, 100.0)
        rgb = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        out[i] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return out
