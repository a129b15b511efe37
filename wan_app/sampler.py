"""The denoising loop: official σ schedule, CFG, the A14B expert choice, a preview every step.

We own the loop instead of calling diffusers' WanPipeline because the product needs what the pipeline
does not give: the official σ schedule, a preview and an ETA every step, the live A14B switch with weight
moves, cancel between steps without decoding a half-done latent, block swap, and a re-plan after a CUDA
OOM. A test keeps it equal to WanPipeline on the same weights, noise and embeddings.

How a clip is conditioned is a strategy (`Conditioning`): plain text-to-video; overlap re-injection (how
T2V models continue a clip); Wan2.2 TI2V's clean first latents at timestep 0 per token.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import compile_blocks, events, sampling
from .errors import Cancelled
from .preview import latent_to_rgb

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

Emit = Callable[[events.Event], None]


# ---- conditioning strategies ------------------------------------------------------------------------
class Conditioning:
    """Plain text-to-video: the model sees the latents as they are."""

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        pass

    def before_step(self, step: int, sigma: float, x: torch.Tensor) -> torch.Tensor:
        return x

    def model_input(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, t

    def clean(self, x0: torch.Tensor) -> torch.Tensor:
        return x0

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def model_kwargs(self) -> dict:
        """Extra inputs of every transformer forward (I2V's CLIP image features)."""
        return {}


class OverlapReinjection(Conditioning):
    """T2V continuation: before every step the first latent frames become the overlap latents noised to
    that step's σ (flow matching: x = (1−σ)·z + σ·ε). The same noise at every step keeps them on one
    straight flow path from noise to the clean overlap, as if the model itself had denoised them; after
    the last step (σ = 0) they are exactly the overlap."""

    def __init__(self, clean: torch.Tensor, noise: torch.Tensor):
        self.z, self.e, self.n = clean, noise, clean.shape[2]

    def to(self, device, dtype) -> None:
        self.z, self.e = self.z.to(device, dtype), self.e.to(device, dtype)

    def before_step(self, step, sigma, x):
        x = x.clone()   # the solver may keep a reference to the tensor it returned last step
        x[:, :, :self.n] = sampling.noise_to_sigma(self.z, self.e, sigma)
        return x

    def finish(self, x):
        return self.before_step(-1, 0.0, x)


class CleanFirstLatents(Conditioning):
    """Wan2.2 TI2V's image conditioning, as diffusers' WanImageToVideoPipeline(expand_timesteps=True) does
    it: the first latent frames are given clean, with timestep 0 on their tokens, and written back at the
    end. The model was trained with it; Extend uses it for the overlap."""

    def __init__(self, condition: torch.Tensor):
        self.c, self.n = condition, condition.shape[2]
        self.token_keep = None

    def to(self, device, dtype) -> None:
        self.c = self.c.to(device, torch.float32)

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_keep is None:
            keep = torch.ones(x.shape[2:], device=x.device)
            keep[:self.n] = 0
            self.token_keep = keep[:, ::2, ::2].flatten()[None]   # patch (1, 2, 2): a token per 2×2 latents
        return self.token_keep

    def model_input(self, x, t):
        return torch.cat([self.c.to(x.dtype), x[:, :, self.n:]], dim=2), self._keep(x) * t

    def clean(self, x0):
        x0[:, :, :self.n] = self.c
        return x0

    def finish(self, x):
        return torch.cat([self.c.to(x.dtype), x[:, :, self.n:]], dim=2)


class ImageToVideo(Conditioning):
    """Wan I2V / FLF2V (wan/image2video.py, first_last_frame2video.py): the DiT input is the noisy latents
    with `y` concatenated on the channels — a 4-channel mask (1 on the latent frames given as images) and
    the VAE latents of a clip whose first (and for FLF2V last) frame is the image, zeros elsewhere: 16 + 4 +
    16 = 36 channels. Every latent frame is denoised, the first too (the image enters only through y and,
    for Wan2.1, the CLIP features on their own key/value weights). cond and uncond get the same y and CLIP.
    `inner` (e.g. OverlapReinjection for Extend) still acts on the 16 noisy channels."""

    def __init__(self, y: torch.Tensor, clip: torch.Tensor | None = None, inner: Conditioning | None = None):
        self.y, self.clip, self.inner = y, clip, inner or Conditioning()

    def to(self, device, dtype) -> None:
        self.y = self.y.to(device, torch.float32)
        self.clip = self.clip.to(device) if self.clip is not None else None
        self.inner.to(device, dtype)

    def before_step(self, step, sigma, x):
        return self.inner.before_step(step, sigma, x)

    def model_input(self, x, t):
        x, t = self.inner.model_input(x, t)
        return torch.cat([x, self.y.to(x.dtype)], dim=1), t

    def clean(self, x0):
        return self.inner.clean(x0)

    def finish(self, x):
        return self.inner.finish(x)

    def model_kwargs(self) -> dict:
        return {} if self.clip is None else {"encoder_hidden_states_image": self.clip}


# ---- the loop ---------------------------------------------------------------------------------------
@dataclass
class Sampled:
    latents: torch.Tensor            # float32 on the CPU
    schedule: sampling.Schedule
    forwards: int                    # transformer forwards run (a batched CFG pair counts as two)
    skipped: int = 0                 # forwards a step cache answered from its stored residual instead


def cfg_passes(scale: float) -> int:
    """CFG at scale 1 is exactly the conditional prediction (uncond + 1·(cond − uncond)), so one forward;
    the official code runs both passes anyway. Any other scale keeps both."""
    return 1 if scale == 1.0 else 2


def needs_negative_prompt(req) -> bool:
    return any(g is not None and cfg_passes(g) == 2 for g in (req.guidance, req.guidance_2))


@torch.no_grad()
def sample(req, spec, plan, placement, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
           emit: Emit, conditioning: Conditioning | None = None, cancel: threading.Event | None = None,
           step_hooks=(), eta: Callable[[int, int, float], float] | None = None,
           window: int | None = None, windows: int | None = None, cache=None) -> Sampled:
    """Denoise `latents` with the request's solver, steps, shift and CFG on the plan's device.

    `eta(step_done, steps, seconds_so_far)` gives the job's remaining seconds for each Progress event.
    `cache` (wan_app.stepcache) may answer a forward from its stored residual; a skipped step still
    yields its preview and progress.
    """
    try:
        return _sample(req, spec, plan, placement, latents, cond, uncond, emit, conditioning, cancel, step_hooks,
                       eta, window, windows, cache)
    finally:
        if cache is not None:
            cache.detach_all()


def _sample(req, spec, plan, placement, latents, cond, uncond, emit, conditioning, cancel, step_hooks, eta,
            window, windows, cache) -> Sampled:
    device = torch.device(plan.device)
    dtype = TORCH_DTYPES[plan.compute_dtype]
    conditioning = conditioning or Conditioning()
    conditioning.to(device, torch.float32)
    schedule, solver = sampling.make_solver(req.solver, req.steps, req.shift, device=device, seed=req.seed)
    x = latents.to(device)
    cond = cond.to(device, dtype)
    uncond = uncond.to(device, dtype) if uncond is not None else None
    extra = {k: v.to(device, dtype) for k, v in conditioning.model_kwargs().items()}
    # plan.cfg_batched: cond and uncond as one batch of 2, so swapped blocks cross the bus once a step
    both = torch.cat([cond, uncond]) if plan.cfg_batched and uncond is not None else None
    expert, forwards = None, 0
    t0 = time.perf_counter()
    n = schedule.steps
    warm_steps, graphs_after_warmup = 0, None    # compiled blocks: steps spent compiling, graphs since
    for i, t in enumerate(schedule.timesteps):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        want = sampling.expert_for(t, req.boundary)
        if want != expert:
            seconds = placement.activate(want)
            if expert is not None:
                emit(events.ExpertSwitch(i, expert, want, seconds, window=window))
            expert = want
        for hook in step_hooks:
            hook(i, want)
        sigma = float(schedule.sigmas[i])
        x = conditioning.before_step(i, sigma, x)
        model = placement.transformer(want)
        if cache is not None:
            cache.begin_step(i, want)
            cache.attach(model)
        scale = req.guidance_2 if want == "low" else req.guidance
        x_model, t_model = conditioning.model_input(x, t.to(device))
        batch = 2 if both is not None and cfg_passes(scale) == 2 else 1
        compiling = compile_blocks.first_forward(model, (batch, *x_model.shape[1:]), dtype)
        if compiling:
            emit(events.Progress("compile", i, n, message="compiling the transformer blocks for this size "
                                 "(once; later steps reuse it)", window=window, windows=windows))
        if cfg_passes(scale) == 1:
            v = _forward(model, x_model.to(dtype), t_model, cond, extra)
            forwards += 1
        else:
            if uncond is None:
                raise ValueError("CFG with a scale other than 1 needs the negative prompt's embeddings")
            v = sampling.cfg(*_velocities(model, x_model.to(dtype), t_model, cond, uncond, both, extra), scale)
            forwards += 2
        # a preview every step: the linear latent→RGB map costs milliseconds (x0 of the noisy channels:
        # an I2V input carries its mask and image latents after them)
        x0 = conditioning.clean(sampling.predicted_clean(x_model[:, :v.shape[1]], v, sigma))
        emit(events.Preview(i + 1, n, latent_to_rgb(x0, spec.vae), expert=None if want == "only" else want,
                            window=window))
        x = solver.step(v, t, x)
        if compiling:     # the compiling step says nothing about seconds per step: count from here
            t0, warm_steps, graphs_after_warmup = time.perf_counter(), i + 1, compile_blocks.graphs_compiled()
        elapsed = time.perf_counter() - t0
        timed = i + 1 - warm_steps
        emit(events.Progress("sample", i + 1, n, eta_s=eta(timed, n - warm_steps, elapsed) if eta and timed else None,
                             message=f"step {i + 1}/{n}", window=window, windows=windows))
    if graphs_after_warmup is not None and compile_blocks.graphs_compiled() > graphs_after_warmup:
        emit(events.Notice(f"torch.compile compiled {compile_blocks.graphs_compiled() - graphs_after_warmup} more "
                           "graph(s) after the first step (recompiles cost time; see the console log)"))
    x = conditioning.finish(x)
    skipped = cache.forwards_skipped if cache is not None else 0
    return Sampled(x.float().cpu(), schedule, forwards - skipped, skipped)


def _forward(model, x, t, context, extra=None):
    tt = t.expand(x.shape[0]) if t.ndim == 0 else t
    return model(hidden_states=x, timestep=tt, encoder_hidden_states=context, return_dict=False,
                 **(extra or {}))[0]


def _velocities(model, x, t, cond, uncond, both=None, extra=None):
    """(v_cond, v_uncond): two forwards, or one batch-2 forward when `both` = cat([cond, uncond])."""
    if both is not None:
        t2 = t.expand(2) if t.ndim == 0 else t.expand(2, -1)        # per-token timesteps are [1, seq]
        extra2 = {k: torch.cat([v, v]) for k, v in (extra or {}).items()}
        v = model(hidden_states=torch.cat([x, x]), timestep=t2, encoder_hidden_states=both,
                  return_dict=False, **extra2)[0]
        return v[:1], v[1:]
    return _forward(model, x, t, cond, extra), _forward(model, x, t, uncond, extra)


def initial_noise(spec, req) -> torch.Tensor:
    """Gaussian noise from a CPU generator, so a seed gives the same video on any device."""
    shape = (1, *spec.latent_shape(req.frames, req.width, req.height))
    g = torch.Generator("cpu").manual_seed(int(req.seed))
    return torch.randn(shape, generator=g, dtype=torch.float32)
