"""Sampling as the official Wan code does it: σ schedules, solvers, CFG and the A14B expert choice.

The official repo ships its own FlowUniPCMultistepScheduler / FlowDPMSolverMultistepScheduler
(wan/utils/fm_solvers*.py). Their *math* is diffusers' UniPC / DPM-Solver++ with flow sigmas, but their
*schedules* differ from diffusers' stock ones (UniPC: diffusers starts at σ=1 with linspace(1, 1/1000),
the official code at σ_max=float32(0.999) with linspace(σ_max, 0); DPM++: diffusers starts at t=999, the
official at t=1000). So we compute the official σ here and hand it to diffusers' solvers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The flow-matching time shift used by every Wan sampler: σ' = s·σ / (1 + (s−1)·σ)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _official_sigma_max() -> float:
    # FlowUniPCMultistepScheduler.__init__ (shift=1): sigmas = 1 - linspace(1, 1/1000, 1000)[::-1],
    # stored as float32, and sigma_max = sigmas[0].item() -> 0.9990000128746033, not 0.999.
    alphas = np.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS)[::-1].copy()
    return torch.from_numpy(1.0 - alphas).to(torch.float32)[0].item()


def raw_sigmas(solver: str, steps: int) -> np.ndarray:
    """Unshifted σ for each step, as the official code builds them (float64)."""
    if solver == "unipc":
        return np.linspace(_official_sigma_max(), 0.0, steps + 1).copy()[:-1]
    # wan/utils/fm_solvers.py get_sampling_sigmas: linspace(1, 0, N+1)[:N] — used for dpm++;
    # Euler and LCM (not in the official repo) use the same schedule so they start from pure noise too
    # (LightX2V's 4-step distills: raw σ 1, .75, .5, .25, then shifted).
    return np.linspace(1, 0, steps + 1)[:steps]


@dataclass
class Schedule:
    sigmas: torch.Tensor      # float32 [N+1], shifted, final 0 appended
    timesteps: torch.Tensor   # int64 [N], what the model is given: int64(σ'·1000), truncated

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def official_schedule(solver: str, steps: int, shift: float) -> Schedule:
    sig = shift_sigmas(raw_sigmas(solver, steps), shift)
    timesteps = torch.from_numpy(sig * NUM_TRAIN_TIMESTEPS).to(torch.int64)
    sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
    return Schedule(sigmas=sigmas, timesteps=timesteps)


def expert_for(t: int | torch.Tensor, boundary: float | None) -> str:
    """A14B: the high-noise expert runs while t >= boundary·1000 (wan/text2video.py, Wan2.2)."""
    if boundary is None:
        return "only"
    return "high" if int(t) >= boundary * NUM_TRAIN_TIMESTEPS else "low"


def switch_step(schedule: Schedule, boundary: float | None) -> int | None:
    """Index of the first step run by the low-noise expert, or None."""
    for i, t in enumerate(schedule.timesteps):
        if expert_for(t, boundary) == "low":
            return i
    return None


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance as in the official code: both passes always run, even at scale 1."""
    return uncond + scale * (cond - uncond)


class EulerFlowSolver:
    """x ← x + (σ_next − σ)·v. One line of math; diffusers' FlowMatchEuler would re-shift our σ."""

    def __init__(self, schedule: Schedule):
        self.sigmas = schedule.sigmas
        self.step_index = 0

    def step(self, v: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        s, s_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        self.step_index += 1
        return (x.float() + (s_next - s) * v.float()).to(x.dtype)


class LcmFlowSolver:
    """LightX2V's WanStepDistillScheduler (what ComfyUI calls LCM), for step-distilled LoRAs: predict the
    clean latent x0 = x − σ·v, then re-noise it to the next σ with fresh noise, x = (1−σ')·x0 + σ'·ε.
    The noise comes from a CPU generator seeded from the run's seed, so a seed gives the same video."""

    def __init__(self, schedule: Schedule, seed: int):
        self.sigmas = schedule.sigmas
        self.step_index = 0
        self.generator = torch.Generator("cpu").manual_seed(
            int(np.random.SeedSequence([int(seed), 0x1C]).generate_state(1, dtype=np.uint32)[0]))

    def step(self, v: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        s, s_next = float(self.sigmas[self.step_index]), float(self.sigmas[self.step_index + 1])
        self.step_index += 1
        x0 = x.float() - s * v.float()
        if s_next <= 0:
            return x0.to(x.dtype)
        noise = torch.randn(x.shape, generator=self.generator, dtype=torch.float32).to(x.device)
        return ((1 - s_next) * x0 + s_next * noise).to(x.dtype)


class _DiffusersSolver:
    """Adapts a diffusers multistep scheduler to `step(v, t, x) -> x_next`."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def step(self, v: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(v, t, x, return_dict=False)[0]


def make_unipc_scheduler(steps: int, shift: float, device=None) -> UniPCMultistepScheduler:
    """diffusers' UniPC configured like the official FlowUniPCMultistepScheduler (bh2, order 2,
    predict x0, lower order at the end, final σ 0) with the official σ. diffusers applies the shift
    itself to the σ we pass, in float64, then truncates t to int64 — the same order of operations as
    the official code, which tests check against `official_schedule`."""
    sched = UniPCMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS, solver_order=2, prediction_type="flow_prediction",
        predict_x0=True, solver_type="bh2", lower_order_final=True, use_flow_sigmas=True,
        flow_shift=shift, final_sigmas_type="zero")
    sched.set_timesteps(sigmas=raw_sigmas("unipc", steps), device=device)
    return sched


def make_dpmpp_scheduler(steps: int, shift: float, device=None) -> DPMSolverMultistepScheduler:
    """diffusers' DPM-Solver++ 2M (midpoint) like the official FlowDPMSolverMultistepScheduler.
    Its set_timesteps takes no σ, so the official schedule is written into it afterwards."""
    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS, solver_order=2, prediction_type="flow_prediction",
        algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        use_flow_sigmas=True, flow_shift=shift, final_sigmas_type="zero")
    sched.set_timesteps(steps, device=device)
    sch = official_schedule("dpm++", steps, shift)
    sched.sigmas = sch.sigmas.clone()
    sched.timesteps = sch.timesteps.to(device) if device is not None else sch.timesteps.clone()
    sched.num_inference_steps = steps
    return sched


def make_solver(solver: str, steps: int, shift: float, device=None, seed: int = 0):
    """Returns (schedule, solver) where solver.step(v, t, x) advances one step."""
    sch = official_schedule(solver, steps, shift)
    if solver == "unipc":
        s = make_unipc_scheduler(steps, shift, device)
        sch = Schedule(sigmas=s.sigmas.clone(), timesteps=s.timesteps.cpu().clone())
        return sch, _DiffusersSolver(s)
    if solver == "dpm++":
        return sch, _DiffusersSolver(make_dpmpp_scheduler(steps, shift, device))
    if solver == "euler":
        return sch, EulerFlowSolver(sch)
    if solver == "lcm":
        return sch, LcmFlowSolver(sch, seed)
    raise ValueError(f"unknown solver {solver!r}")


def predicted_clean(x: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
    """Flow matching: x_t = (1−σ)·x0 + σ·ε and v = ε − x0, so x0 = x_t − σ·v (for the preview)."""
    return x.float() - float(sigma) * v.float()


def noise_to_sigma(clean: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_σ = (1−σ)·z + σ·ε — how long-video overlap latents are put back at each step."""
    return (1.0 - float(sigma)) * clean + float(sigma) * noise
