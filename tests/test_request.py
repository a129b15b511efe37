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
    (dict(steps=0), "steps", "1 to 1000"),
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
