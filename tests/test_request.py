"""Bad input gets one clear message naming the field and what is allowed; good input gets the
official defaults of its model."""
import numpy as np
import pytest
import torch

from wan_app import catalog, preview
from wan_app.errors import UserError
from wan_app.request import Request, parse_size, resolve


def test_defaults_are_the_official_ones_for_each_model():
    r, spec = resolve(Request(model="wan2.2-t2v-a14b", prompt="a cat"))
    assert (r.width, r.height, r.frames, r.steps, r.shift) == (1280, 720, 81, 40, 12.0)
    assert (r.guidance, r.guidance_2, r.boundary) == (4.0, 3.0, 0.875)
    assert r.negative_prompt == catalog.DEFAULT_NEGATIVE_PROMPT
    r, _ = resolve(Request(model="wan2.2-ti2v-5b", prompt="a cat"))
    assert (r.width, r.height, r.frames, r.fps, r.steps) == (1280, 704, 121, 24, 50)
    r, _ = resolve(Request(model="wan2.1-t2v-1.3b", prompt="a cat"))
    assert (r.width, r.height, r.guidance, r.guidance_2, r.boundary) == (832, 480, 5.0, None, None)


def test_random_seed_is_drawn_and_kept():
    r, _ = resolve(Request(model="tiny-wan2.1-t2v", prompt="x"))
    assert 0 <= r.seed < 2**32
    r2, _ = resolve(Request(model="tiny-wan2.1-t2v", prompt="x", seed=r.seed))
    assert r2.seed == r.seed


@pytest.mark.parametrize("kwargs,field,fix_part", [
    (dict(frames=80), "frames", "77 or 81"),
    (dict(frames=0), "frames", "4n+1"),
    (dict(width=830, height=480), "size", "steps of 16"),
    (dict(model="wan2.2-ti2v-5b", width=1280, height=720), "size", "steps of 32"),
    (dict(prompt="   "), "prompt", "describe"),
    (dict(model="wan9"), "model", "wan2.1-t2v-1.3b"),
    (dict(solver="ddim"), "solver", "unipc"),
    (dict(steps=0), "steps", "1 to 250"),                      # UniPC at the 1.3B's shift 5
    (dict(steps=0, solver="euler"), "steps", "1 to 1000"),
    (dict(model="wan2.2-t2v-a14b", boundary=1.5), "boundary", "0.875"),
    (dict(seed=2**40), "seed", "-1 for random"),
])
def test_bad_input_names_the_field_and_the_fix(kwargs, field, fix_part):
    base = dict(model="wan2.1-t2v-1.3b", prompt="a cat")
    base.update(kwargs)
    with pytest.raises(UserError) as e:
        resolve(Request(**base))
    assert e.value.field == field
    assert fix_part in e.value.fix or fix_part in e.value.problem


def test_size_text_is_parsed_or_refused():
    assert parse_size("832x480") == (832, 480)
    assert parse_size(" 1280 X 720 ") == (1280, 720)
    with pytest.raises(UserError) as e:
        parse_size("big")
    assert e.value.field == "size"


def test_request_round_trips_through_metadata_and_ignores_unknown_keys():
    r, _ = resolve(Request(model="tiny-wan2.1-t2v", prompt="x", seed=3))
    d = r.to_dict() | {"from_a_future_version": 1}
    assert Request.from_dict(d) == r


def test_catalog_shapes_give_the_token_counts_of_wan_facts():
    assert catalog.get("wan2.1-t2v-1.3b").seq_len(81, 832, 480) == 32760
    assert catalog.get("wan2.1-t2v-14b").seq_len(81, 1280, 720) == 75600
    assert catalog.get("wan2.2-ti2v-5b").seq_len(121, 1280, 704) == 27280


def test_preview_applies_the_linear_factors_to_each_latent_pixel():
    """A latent equal to the unit vector of channel c maps to (F[c] + b + 1)/2."""
    for kind, factors, bias in (("wan2.1", preview.WAN21_FACTORS, preview.WAN21_BIAS),
                                ("wan2.2", preview.WAN22_FACTORS, preview.WAN22_BIAS)):
        z = len(factors)
        for c in (0, z // 2, z - 1):
            lat = torch.zeros(1, z, 2, 3, 4)
            lat[0, c] = 1.0
            rgb = preview.latent_to_rgb(lat, kind, max_side=4)
            assert rgb.shape == (2, 3, 4, 3) and rgb.dtype == np.uint8
            want = np.clip((np.array(factors[c]) + np.array(bias) + 1) / 2, 0, 1) * 255
            assert np.abs(rgb[1, 2, 3].astype(float) - want).max() <= 0.5 + 1e-6


def test_preview_upscales_tiny_latents_so_they_are_visible():
    rgb = preview.latent_to_rgb(torch.zeros(1, 16, 3, 8, 8), "wan2.1", max_side=256)
    assert rgb.shape == (3, 256, 256, 3)


# ---- the solver's real step limit ---------------------------------------------------------------------

SHIFTS = [0.5, 1.0, 3.0, 5.0, 8.0, 12.0, 50.0, 100.0]


@pytest.mark.parametrize("shift", SHIFTS)
def test_the_unipc_limit_is_computed_as_diffusers_builds_the_schedule(shift):
    """request.py reproduces the first two UniPC timesteps without numpy/torch; they must equal
    sampling's real schedule (the one handed to diffusers) for every step count."""
    from wan_app import request, sampling
    assert struct_float32_sigma_max() == sampling._official_sigma_max()
    for n in range(2, 1001):
        t = sampling.official_schedule("unipc", n, shift).timesteps
        assert request._unipc_first_distinct(n, shift) == (int(t[0]) != int(t[1])), n


def struct_float32_sigma_max():
    import struct
    return struct.unpack("f", struct.pack("f", 1.0 - 1.0 / 1000))[0]


def run_solver(solver, steps, shift):
    from wan_app import sampling
    sch, s = sampling.make_solver(solver, steps, shift)
    x = torch.zeros(1, 1, 1, 2)
    for t in sch.timesteps:
        x = s.step(torch.ones_like(x), t, x)
    return x


@pytest.mark.parametrize("shift", [5.0, 12.0, 100.0])
def test_unipc_runs_at_its_limit_and_fails_one_step_above_it(shift):
    from wan_app.request import max_steps
    top = max_steps("unipc", shift)
    assert top < 1000
    run_solver("unipc", top, shift)
    with pytest.raises(AssertionError):          # the empty AssertionError users saw after all sampling
        run_solver("unipc", top + 1, shift)


@pytest.mark.parametrize("solver", [s for s in catalog.SOLVERS if s != "unipc"])
@pytest.mark.parametrize("shift", [1.0, 12.0, 100.0])
def test_the_other_solvers_run_all_1000_steps(solver, shift):
    """Euler and LCM step by a counter; DPM++ looks its timestep up, but its first one (σ = 1, t = 1000) is
    always unique. So 1000 steps at any shift."""
    from wan_app.request import max_steps
    assert max_steps(solver, shift) == 1000
    run_solver(solver, 1000, shift)


@pytest.mark.parametrize("model, steps, ok", [
    ("wan2.1-t2v-1.3b", 250, True), ("wan2.1-t2v-1.3b", 251, False),       # shift 5
    ("wan2.2-t2v-a14b", 91, True), ("wan2.2-t2v-a14b", 92, False),         # shift 12
])
def test_unipc_steps_above_the_limit_are_refused_up_front(model, steps, ok):
    req = Request(model=model, prompt="a cat", steps=steps)
    if ok:
        assert resolve(req)[0].steps == steps
        return
    with pytest.raises(UserError) as e:
        resolve(req)
    assert e.value.field == "steps" and f"1 to {steps - 1}" in e.value.fix and "unipc" in e.value.problem
    assert resolve(Request(model=model, prompt="a cat", steps=steps, solver="euler"))[0].steps == steps
