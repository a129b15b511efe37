"""The VAE as the pipeline uses it: frames ↔ normalised latents, on the device only while it works.

The VAE runs in float32, as in the official code (wan/modules/vae.py): bf16 decoding shows banding. It
stays on the CPU except while encoding or decoding, so the sampling phase never holds it in VRAM (the
Wan2.2 VAE is 2.8 GB in fp32); the planner counts it in the encode and decode phases only.
"""
from __future__ import annotations

import time

import numpy as np
import torch


class VaeCodec:
    def __init__(self, vae, device: torch.device | str, source: str | None = None):
        self.vae = vae
        self.device = torch.device(device)
        self.source = source
        self._decode_seconds: dict[tuple, float] = {}    # last decode time per latent shape and tiling

    def _on_device(self):
        if self.vae.device != self.device:
            self.vae.to(self.device)
        return self.vae

    def _off_device(self) -> None:
        if self.device.type != "cpu":
            self.vae.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.vae.config
        return (torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1),
                torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats()
        return (z.float().cpu() - mean) / std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats()
        return latents.float().cpu() * std + mean

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [F,H,W,3] → normalised latent [1, z, f, h, w] (the mode of the posterior)."""
        vae = self._on_device()
        try:
            x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
            z = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mode()
            return self.normalize(z)
        finally:
            self._off_device()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """VAE decode of z·std + mean (the sampler's latents are normalised), clamp to [−1, 1]."""
        t0 = time.perf_counter()
        vae = self._on_device()
        try:
            z = self.denormalize(latents)
            video = vae.decode(z.to(vae.device, vae.dtype), return_dict=False)[0]
            video = video.float().clamp(-1, 1)[0]                     # [3, F, H, W]
            frames = ((video + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
        finally:
            self._off_device()
        self._decode_seconds[self._key(latents)] = time.perf_counter() - t0
        return frames

    def decode_seconds(self, latent_shape) -> float | None:
        """How long the last decode of latents [z, f, h, w] with this tiling took (None until measured
        once): on a consumer GPU decoding can take longer than sampling, so the ETA includes it."""
        return self._decode_seconds.get((tuple(latent_shape), self._tiled()))

    def _tiled(self) -> bool:
        return bool(getattr(self.vae, "use_tiling", False))

    def _key(self, latents: torch.Tensor) -> tuple:
        return tuple(latents.shape[1:]), self._tiled()
