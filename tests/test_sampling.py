"""The schedules and guidance must equal the official Wan code, not diffusers' stock defaults."""
import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from wan_app import sampling


def official_unipc_timesteps(steps: int, shift: float):
    """Transcribed from wan/utils/fm_solvers_unipc.py (FlowUniPCMultistepScheduler, built with
    shift=1 in __init__, then set_timesteps(steps, shift=shift)), independent of wan_app.sampling."""
    n_train = 1000
    alphas = np.linspace(1, 1 / n_train, n_train)[::-1].copy()
    sigmas = torch.from_numpy(1.0 - alphas).to(dtype=torch.float32)
    sigma_max, sigma_min = sigmas[0].item(), sigmas[-1].item()
    s = np.linspace(sigma_max, sigma_min, steps + 1).copy()[:-1]
    s = shift * s / (1 + (shift - 1) * s)
    timesteps = s * n_train
    s = np.concatenate([s, [0]]).astype(np.float32)
    return torch.from_numpy(timesteps).to(dtype=torch.int64), torch.from_numpy(s)


def official_dpm_timesteps(steps: int, shift: float):
    """wan/utils/fm_solvers.py get_sampling_sigmas + retrieve_timesteps(sigmas=...)."""
    s = np.linspace(1, 0, steps + 1)[:steps]
    s = shift * s / (1 + (shift - 1) * s)
    return torch.from_numpy(s * 1000).to(torch.int64), torch.from_numpy(np.concatenate([s, [0]]).astype(np.float32))


@pytest.mark.parametrize("steps", [8, 10, 40, 50])
@pytest.mark.parametrize("shift", [5.0, 8.0, 12.0])
@pytest.mark.parametrize("solver,official", [("unipc", official_unipc_timesteps), ("dpm++", official_dpm_timesteps)])
def test_timesteps_equal_the_official_formula(steps, shift, solver, official):
    schedule, _ = sampling.make_solver(solver, steps, shift)
    want_t, want_s = official(steps, shift)
    assert torch.equal(schedule.timesteps, want_t)
    assert torch.equal(schedule.sigmas, want_s)


def test_diffusers_stock_unipc_schedule_differs_from_the_official_one():
    """Why we pass σ ourselves: the stock flow schedule starts at σ=1 and its timesteps are off."""
    stock = UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=5.0, prediction_type="flow_prediction")
    stock.set_timesteps(50)
    want, _ = official_unipc_timesteps(50, 5.0)
    assert not torch.equal(stock.timesteps, want)


def test_unipc_scheduler_runs_on_the_official_schedule():
    sched = sampling.make_unipc_scheduler(40, 12.0)
    want_t, want_s = official_unipc_timesteps(40, 12.0)
    assert torch.equal(sched.timesteps, want_t)
    assert torch.equal(sched.sigmas, want_s)


def test_dpm_scheduler_starts_at_t_1000_like_the_official_one():
    sched = sampling.make_dpmpp_scheduler(10, 5.0)
    assert int(sched.timesteps[0]) == 1000
    assert torch.equal(sched.timesteps, official_dpm_timesteps(10, 5.0)[0])


@pytest.mark.parametrize("steps,high", [(40, 26), (10, 7)])
def test_a14b_expert_split_follows_the_boundary(steps, high):
    """40 steps at shift 12, boundary 0.875: 26 high-noise steps then 14 low-noise (WAN_FACTS)."""
    schedule = sampling.official_schedule("unipc", steps, 12.0)
    experts = [sampling.expert_for(t, 0.875) for t in schedule.timesteps]
    assert experts == ["high"] * high + ["low"] * (steps - high)
    assert sampling.switch_step(schedule, 0.875) == high
    assert all(int(t) >= 875 for t in schedule.timesteps[:high])
    assert all(int(t) < 875 for t in schedule.timesteps[high:])


def test_single_expert_models_never_switch():
    schedule = sampling.official_schedule("unipc", 10, 5.0)
    assert sampling.switch_step(schedule, None) is None
    assert {sampling.expert_for(t, None) for t in schedule.timesteps} == {"only"}


def test_cfg_runs_both_passes_even_at_scale_one():
    cond, uncond = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    assert torch.equal(sampling.cfg(cond, uncond, 5.0), torch.tensor([6.0, -9.0]))
    assert torch.equal(sampling.cfg(cond, uncond, 1.0), cond)


def test_euler_reaches_the_clean_latent_when_velocity_is_exact():
    """With v = ε − x0 exact, Euler on flow matching lands on x0 at σ=0."""
    torch.manual_seed(0)
    x0, eps = torch.randn(4), torch.randn(4)
    schedule, solver = sampling.make_solver("euler", 6, 5.0)
    x = sampling.noise_to_sigma(x0, eps, float(schedule.sigmas[0]))
    for t in schedule.timesteps:
        x = solver.step(eps - x0, t, x)
    assert torch.allclose(x, x0, atol=1e-5)


def test_predicted_clean_inverts_the_noising():
    torch.manual_seed(1)
    x0, eps = torch.randn(8), torch.randn(8)
    x = sampling.noise_to_sigma(x0, eps, 0.7)
    assert torch.allclose(sampling.predicted_clean(x, eps - x0, 0.7), x0, atol=1e-6)
