"""Step caches: MagCache's skip schedule from the published tables, TeaCache's per-forward rule, the
block-loop replay, and a sampler run that makes exactly the counted transformer forwards."""
import copy
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from wan_app import catalog, planner, sampler, sampling, stepcache
from wan_app.errors import UserError
from wan_app.hardware import Hardware
from wan_app.request import Request, resolve
from wan_app.tiny import reference_components

ROOT = Path(__file__).resolve().parents[1]
CPU = Hardware.simulated(vram_gb=None, ram_gb=24.0)
T21, A14 = "tiny-wan2.1-t2v", "tiny-wan2.2-t2v-a14b"


# ---- hand-worked schedules ----------------------------------------------------------------------------
# Derived by stepping through the published rule (docs/STEP_CACHES.md "How the published MagCache decides")
# on the published tables, one forward at a time, with the published defaults.
#
# Wan2.1 T2V 1.3B, 50 steps, E 0.12, K 4, R 0.2: retention int(100·0.2) = 20 forwards, so steps 0-9 run.
# The cond ratio of step i is table[2i − 2] (after the [1.0]*2 padding):
#   step 10: r 0.99511 → ratio 0.99511, err 0.00489, 1 step  → skip
#   step 11: r 0.99535 → ratio 0.99048, err 0.01441, 2 steps → skip
#   step 12: r 0.99552 → ratio 0.98605, err 0.02836, 3 steps → skip
#   step 13: r 0.99541 → ratio 0.98152, err 0.04684, 4 steps → skip
#   step 14: r 0.99540 → 5 steps > K                          → compute, reset
#   step 15: r 0.99489 → ratio 0.99489, err 0.00511           → skip ... (groups of four while err stays
#   below 0.12; near the end the ratios fall (0.98 … 0.82) and the error grows faster: groups of 2, then 1).
# The uncond curve differs in the 5th decimal only and gives the same steps.
WAN21_1_3B_50 = [10, 11, 12, 13, 15, 16, 17, 18, 20, 21, 22, 23, 25, 26, 27, 28, 30, 31, 32, 33, 35, 36, 37,
                 39, 40, 42, 43, 45, 47]
# Wan2.1 T2V 14B, 50 steps, E 0.24, K 6, R 0.2: the same way, groups of six.
WAN21_14B_50 = [10, 11, 12, 13, 14, 15, 17, 18, 19, 20, 21, 22, 24, 25, 26, 27, 28, 29, 31, 32, 33, 34, 35, 37,
                38, 39, 40, 42, 43, 45, 46, 48]
# Wan2.2 T2V A14B, 40 steps (26 high + 14 low), E 0.06, K 2, R 0.4. Retention: high cnt < int(52·0.4) =
# 20 → steps 0-9; low 52 ≤ cnt ≤ 28·0.4 + 52 = 63.2 → steps 26-31.
#   step 10: r 0.99659 → err 0.00341, 1 → skip; step 11: r 0.99534 → ratio 0.99195, err 0.01146, 2 → skip;
#   step 12: 3 steps > K → compute. Groups of two up to step 25 (step 25: r 0.99125, err 0.00875 → skip).
#   Steps 26-31 retained: the accumulators are left as step 25 left them (published code).
#   step 32: r 0.97776 → ratio 0.99125·0.97776 = 0.96920, err 0.00875 + 0.03080 = 0.03955, 2 → skip;
#   step 33: ratio 0.94282, err 0.09672 ≥ 0.06 → compute; step 34: r 0.96731, err 0.03269 → skip;
#   step 35: err 0.10546 → compute; step 36: r 0.94385, err 0.05615 → skip; step 37: compute;
#   step 38: r 0.88108, err 0.11892 → compute; step 39: r 0.80263, err 0.19737 → compute.
A14B_40 = [10, 11, 13, 14, 16, 17, 19, 20, 22, 23, 25, 32, 34, 36]


def a14b_experts(steps: int) -> list[str]:
    sch = sampling.official_schedule("unipc", steps, 12.0)
    return [sampling.expert_for(t, 0.875) for t in sch.timesteps]


@pytest.mark.parametrize("model_id,expected", [("wan2.1-t2v-1.3b", WAN21_1_3B_50), ("wan2.1-t2v-14b", WAN21_14B_50)])
def test_magcache_schedule_for_wan21_at_50_steps_equals_the_hand_worked_table(model_id, expected):
    cache = stepcache.make_cache("magcache", catalog.get(model_id), 50)
    assert cache.skipped_steps("cond") == expected
    assert cache.skipped_steps("uncond") == expected
    assert cache.planned_skips == 2 * len(expected)
    assert all(not any(cache.schedule[i]) for i in range(10))          # the retained steps


def test_magcache_schedule_for_a14b_at_40_steps_uses_each_experts_curve_and_window():
    experts = a14b_experts(40)
    assert experts.index("low") == 26 == stepcache.MAG_TABLES["wan2.2-t2v-a14b"].switch
    cache = stepcache.make_cache("magcache", catalog.get("wan2.2-t2v-a14b"), 40, experts=experts)
    assert cache.skipped_steps("cond") == A14B_40
    assert cache.skipped_steps("uncond") == A14B_40
    # at the official length the per-expert stretch is the published curve itself
    cond, _ = stepcache.MAG_TABLES["wan2.2-t2v-a14b"].curves()
    assert [round(x, 5) for x in cond[24:28]] == [0.99057, 0.99125, 0.65523, 0.98808]


# Wan2.2 I2V A14B, 40 steps (shift 5, boundary 0.900: 15 high + 25 low), E 0.06, K 2, R 0.1, i2v
# retention: cnt < int(30 + 50·0.1) = 35, so every high-noise forward, steps 15-16 and step 17's cond run.
#   uncond: step 17 r 0.99088 → err 0.00912, 1 → skip; step 18 r 0.98855 → ratio 0.97953, err 0.02959,
#   2 → skip; step 19: 3 > K → compute. cond starts a step later: step 18 r 0.98852 → err 0.01148 →
#   skip; step 19 r 0.98895 → ratio 0.97760, err 0.03388 → skip; step 20 → compute. Pairs of skips
#   follow; from step 27 the ratios fall faster and the error passes 0.06 after one skip.
I2V_A14B_COND = [18, 19, 21, 22, 24, 25, 27, 29, 31, 33]
I2V_A14B_UNCOND = [17, 18, 20, 21, 23, 24, 26, 27, 29, 31, 33]


def test_magcache_schedule_for_i2v_a14b_keeps_the_whole_high_noise_expert():
    sch = sampling.official_schedule("unipc", 40, 5.0)
    experts = [sampling.expert_for(t, 0.9) for t in sch.timesteps]
    assert experts.index("low") == 15 == stepcache.MAG_TABLES["wan2.2-i2v-a14b"].switch
    cache = stepcache.make_cache("magcache", catalog.get("wan2.2-i2v-a14b"), 40, experts=experts)
    assert cache.skipped_steps("cond") == I2V_A14B_COND
    assert cache.skipped_steps("uncond") == I2V_A14B_UNCOND


def test_a14b_at_other_step_counts_never_skips_at_the_switch_or_reuses_the_other_experts_residual():
    for steps in (8, 20, 30, 60):
        experts = a14b_experts(steps)
        cache = stepcache.make_cache("magcache", catalog.get("wan2.2-t2v-a14b"), steps, experts=experts,
                                     threshold=1.0)
        switch = experts.index("low")
        assert cache.schedule[switch] == (False, False), steps
        assert cache.planned_skips > 0, steps


def test_threshold_zero_and_off_skip_nothing():
    spec = catalog.get("wan2.1-t2v-1.3b")
    assert stepcache.make_cache("off", spec, 50) is None
    assert stepcache.make_cache(None, spec, 50) is None
    cache = stepcache.make_cache("magcache", spec, 50, threshold=0.0)
    assert cache.planned_skips == 0


def test_a_table_of_another_length_is_stretched_per_branch_as_published():
    table = stepcache.MAG_TABLES["wan2.1-t2v-1.3b"]
    cond, uncond = table.curves()
    cache = stepcache.make_cache("magcache", catalog.get("wan2.1-t2v-1.3b"), 25, threshold=1.0)
    # 25 of 50 by nearest index: step i takes calibration step round(i·49/24) (numpy rounds half to even)
    idx = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 27, 29, 31, 33, 35, 37, 39, 41, 43, 45, 47, 49]
    assert list(stepcache.nearest_interp(cond, 25)) == [cond[k] for k in idx]
    assert list(stepcache.nearest_interp(uncond, 25)) == [uncond[k] for k in idx]
    assert cache.steps == 25 and len(cache.schedule) == 25


def test_batched_cfg_skips_a_pair_only_when_both_branches_would():
    spec = catalog.get("wan2.1-t2v-1.3b")
    apart = stepcache.make_cache("magcache", spec, 50)
    joint = stepcache.make_cache("magcache", spec, 50, batched=True)
    assert all(c == u for c, u in joint.schedule)
    # the 1.3B curves agree to the 5th decimal, so batching changes nothing there
    assert joint.skipped_steps() == apart.skipped_steps() == WAN21_1_3B_50


def test_batched_cfg_where_the_branches_disagree_runs_the_pair_and_restarts_both():
    t = stepcache.MagTable("x", tuple([0.99, 0.99] + [0.99, 0.90] * 8), 0.05, 4, 0.0)
    apart = stepcache.magcache_schedule(t, ["only"] * 10, [2] * 10, 0.05, 4, 0.0)
    joint = stepcache.magcache_schedule(t, ["only"] * 10, [2] * 10, 0.05, 4, 0.0, batched=True)
    assert any(c and not u for c, u in apart)          # cond would skip where uncond would not
    assert all(c == u for c, u in joint)
    assert sum(c for c, _ in joint) < sum(c for c, _ in apart)


def test_cfg_one_steps_have_no_uncond_forward_to_skip():
    cache = stepcache.make_cache("magcache", catalog.get("wan2.1-t2v-1.3b"), 50, passes=1)
    assert cache.skipped_steps("uncond") == []
    assert cache.skipped_steps("cond") == WAN21_1_3B_50
    assert cache.describe()["planned_forwards"] == 50


def test_the_plan_can_say_what_will_be_skipped():
    cache = stepcache.make_cache("magcache", catalog.get("wan2.1-t2v-1.3b"), 50)
    text = cache.summary()
    assert "58 of 100" in text and "10-13" in text and "threshold 0.12" in text
    d = cache.describe()
    assert d["kind"] == "magcache" and d["threshold"] == 0.12 and d["max_skips"] == 4
    assert d["skipped_steps"]["cond"] == WAN21_1_3B_50 and d["source"].startswith("https://github.com/Zehong-Ma")


def test_extra_memory_of_a_cache_is_counted_from_the_tokens():
    spec = catalog.get("wan2.1-t2v-14b")
    one = 32760 * 5120 * 2 / 1e9                        # one residual of 832x480x81 in bf16
    assert stepcache.residual_gb(spec, 32760, 2) == pytest.approx(4 * one)
    assert stepcache.residual_gb(spec, 32760, 2, batched=True) == pytest.approx(5 * one)


# ---- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_id", ["wan2.2-t2v-a14b", "wan2.2-ti2v-5b", "tiny-wan2.2-t2v-a14b"])
def test_teacache_for_a_model_without_published_coefficients_names_the_cache_setting(model_id):
    with pytest.raises(UserError) as e:
        stepcache.make_cache("teacache", catalog.get(model_id), 40)
    assert e.value.field == "cache"
    assert "teacache" in str(e.value) and "magcache" in e.value.fix


@pytest.mark.parametrize("bad", [-0.01, 1.5, float("nan"), float("inf"), True, "0.1"])
def test_a_threshold_out_of_range_names_cache_threshold(bad):
    with pytest.raises(UserError) as e:
        stepcache.make_cache("magcache", catalog.get("wan2.1-t2v-1.3b"), 50, threshold=bad)
    assert e.value.field == "cache_threshold"
    assert "0.12" in e.value.fix                     # the published value is offered


def test_an_unknown_cache_kind_lists_the_kinds():
    with pytest.raises(UserError) as e:
        stepcache.make_cache("fastcache", catalog.get("wan2.1-t2v-1.3b"), 50)
    assert e.value.field == "cache" and "magcache" in e.value.fix and "teacache" in e.value.fix


MAG_MODELS = ["wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-t2v-a14b", "wan2.2-ti2v-5b", "wan2.2-i2v-a14b",
              "wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p"]
TEA_MODELS = ["wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p"]


def test_the_caches_with_published_tables_are_offered_and_the_others_refused():
    for spec in catalog.MODELS.values():
        real = stepcache.STAND_INS.get(spec.id, spec.id)
        for kind, have in (("magcache", MAG_MODELS), ("teacache", TEA_MODELS)):
            if real in have:
                assert stepcache.check(kind, spec) == kind
            else:
                with pytest.raises(UserError) as e:
                    stepcache.check(kind, spec)
                assert e.value.field == "cache", (kind, spec.id)
    assert set(stepcache.STAND_INS) <= {s.id for s in catalog.MODELS.values() if s.tiny}


# ---- the published numbers are the documented ones -------------------------------------------------
def _doc_lists() -> dict[str, list[float]]:
    text = (ROOT / "docs" / "STEP_CACHES.md").read_text()
    out = {}
    for m in re.finditer(r"### (magcache|teacache) (\S+)\n.*?```text\n(.*?)```", text, re.S):
        out[f"{m.group(1)} {m.group(2)}"] = [float(x) for x in m.group(3).replace("\n", " ").split(",")]
    return out


def test_docs_list_exactly_the_tables_and_coefficients_the_code_uses():
    docs = _doc_lists()
    want = {f"magcache {k}": list(t.ratios) for k, t in stepcache.MAG_TABLES.items()}
    want |= {f"teacache {k}": list(t.coefficients) for k, t in stepcache.TEA_TABLES.items()}
    assert docs == want
    # the published tables cover 50 steps (Wan2.1, TI2V) and 40 (A14B): 2·steps − 2 ratios
    assert {k: t.steps for k, t in stepcache.MAG_TABLES.items()} == {
        "wan2.1-t2v-1.3b": 50, "wan2.1-t2v-14b": 50, "wan2.2-t2v-a14b": 40, "wan2.2-ti2v-5b": 50,
        "wan2.2-ti2v-5b/i2v": 50, "wan2.1-i2v-14b-480p": 40, "wan2.1-i2v-14b-720p": 40, "wan2.2-i2v-a14b": 40}


# ---- runs of tiny models through the real sampler ---------------------------------------------------
_MODELS: dict = {}


def tiny_models(model_id):
    if model_id not in _MODELS:
        c = reference_components(model_id)
        _MODELS[model_id] = {"only": c.transformer} if c.transformer_2 is None else {
            "high": c.transformer, "low": c.transformer_2}
    return _MODELS[model_id]


class Place:
    """The two Placement calls the sampler makes, on in-memory tiny models."""

    def __init__(self, models):
        self.models = models

    def activate(self, which):
        return 0.0

    def transformer(self, which):
        return self.models[which]


class BlockCounter:
    """Counts the forwards that really run the blocks (batch rows through the first block)."""

    def __init__(self, models):
        self.n = 0
        self.handles = [m.blocks[0].register_forward_pre_hook(self._pre) for m in models.values()]

    def _pre(self, module, args):
        self.n += args[0].shape[0]

    def remove(self):
        for h in self.handles:
            h.remove()


def run(model_id, steps, kind=None, threshold=None, batched=False, seed=3, models=None):
    req, spec = resolve(Request(model=model_id, prompt="x", frames=9, width=64, height=64, steps=steps, seed=seed))
    plan = replace(planner.plan(CPU, spec, 64, 64, 9), cfg_batched=batched)
    models = models or tiny_models(model_id)
    cache = stepcache.for_request(req, spec, kind, threshold, batched=batched) if kind else None
    g = torch.Generator().manual_seed(5)
    cond = torch.randn(1, 512, spec.text_dim, generator=g)
    uncond = torch.randn(1, 512, spec.text_dim, generator=g)
    counter = BlockCounter(models)
    hooks = ()
    try:
        if cache is not None:
            for m in models.values():
                cache.attach(m)
            hooks = (cache.begin_step,)
        out = sampler.sample(req, spec, plan, Place(models), sampler.initial_noise(spec, req), cond, uncond,
                             lambda e: None, step_hooks=hooks)
    finally:
        counter.remove()
        if cache is not None:
            cache.detach_all()
    return out, cache, counter.n


@pytest.mark.parametrize("batched", [False, True])
def test_a_magcache_run_makes_exactly_the_counted_transformer_forwards(batched):
    out, cache, ran = run(T21, 50, "magcache", batched=batched)
    assert out.forwards == 100
    assert cache.forwards_skipped == cache.planned_skips == 58
    assert ran == cache.forwards_run == out.forwards - cache.forwards_skipped == 42
    assert sorted({s for s, b, skip in cache.log if skip}) == WAN21_1_3B_50   # the tiny borrows the 1.3B table
    assert len(cache.log) == 100
    if not batched:      # the replayed residuals change the result: the skips are real
        plain, _, ran_plain = run(T21, 50)
        assert ran_plain == 100 and not torch.equal(out.latents, plain.latents)
        assert torch.isfinite(out.latents).all()


def test_an_a14b_magcache_run_follows_the_schedule_over_both_experts():
    out, cache, ran = run(A14, 40, "magcache")
    assert cache.forwards_skipped == 28 and ran == out.forwards - 28 == 52
    assert sorted({s for s, b, skip in cache.log if skip and b == "cond"}) == A14B_40
    json.dumps(cache.describe())                          # goes into the sidecar as it is


def test_threshold_zero_gives_latents_identical_to_no_cache():
    plain, _, ran_plain = run(T21, 12)
    for kind in ("magcache", "teacache"):
        cached, cache, ran = run(T21, 12, kind, threshold=0.0)
        assert cache.forwards_skipped == 0 and ran == ran_plain == 24
        assert torch.equal(cached.latents, plain.latents), kind


def _call(model, x, t, ctx):
    return model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]


def test_a_replayed_forward_equals_the_computed_one_for_the_same_input():
    model = tiny_models(T21)["only"]
    cache = stepcache.make_cache("magcache", catalog.get(T21), 50)
    step = WAN21_1_3B_50[0]
    g = torch.Generator().manual_seed(1)
    x, ctx, t = torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 512, 32, generator=g), torch.tensor([500])
    cache.attach(model)
    try:
        cache.begin_step(step - 1)
        computed = _call(model, x, t, ctx)
        cache.begin_step(step)
        replayed = _call(model, x, t, ctx)
    finally:
        cache.detach_all()
    assert cache.log == [(step - 1, "cond", False), (step, "cond", True)]
    assert torch.allclose(replayed, computed, atol=1e-6)
    assert torch.equal(_call(model, x, t, ctx), computed)   # detached: the model is as it was


def test_the_real_blocks_come_back_when_a_forward_raises():
    model = tiny_models(T21)["only"]
    blocks = model.blocks
    cache = stepcache.make_cache("magcache", catalog.get(T21), 50)
    cache.attach(model)

    def boom(module, args):
        raise RuntimeError("CUDA out of memory (simulated)")
    h = blocks[1].register_forward_pre_hook(boom)
    try:
        cache.begin_step(0)
        with pytest.raises(RuntimeError, match="out of memory"):
            _call(model, torch.randn(1, 16, 3, 8, 8), torch.tensor([900]), torch.randn(1, 512, 32))
    finally:
        h.remove()
        cache.detach_all()
    assert model.blocks is blocks and len(model.blocks) == 2


def test_a_forward_without_begin_step_is_refused():
    model = tiny_models(T21)["only"]
    cache = stepcache.make_cache("magcache", catalog.get(T21), 50)
    cache.attach(model)
    try:
        with pytest.raises(RuntimeError, match="begin_step"):
            _call(model, torch.randn(1, 16, 3, 8, 8), torch.tensor([900]), torch.randn(1, 512, 32))
    finally:
        cache.detach_all()
    assert len(model.blocks) == 2


# ---- TeaCache -----------------------------------------------------------------------------------------
def smooth_time_model():
    """The tiny model with its time embedding made slow. With freq_dim 32 its random embedding changes by
    50-100 % from one step to the next, far outside what the published polynomial was fitted on, so TeaCache
    would never skip; zeroing the input columns of the fast frequencies (sinusoid period < ~2000 timesteps)
    leaves an embedding that drifts by about 1 % a step, as a real one does."""
    model = copy.deepcopy(tiny_models(T21)["only"])
    lin = model.condition_embedder.time_embedder.linear_1
    half = lin.in_features // 2
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / half)
    fast = torch.cat([freqs, freqs]) > 3e-3                  # [cos | sin] (flip_sin_to_cos)
    with torch.no_grad():
        lin.weight[:, fast] = 0.0
    return {"only": model}


TEA_THRESHOLD = 0.3


@pytest.mark.parametrize("batched", [False, True])
def test_a_teacache_run_skips_what_its_prediction_says_and_counts_it(batched):
    models = smooth_time_model()
    out, cache, ran = run(T21, 30, "teacache", threshold=TEA_THRESHOLD, batched=batched, models=models)
    predicted = cache.predict(models["only"], sampling.official_schedule("unipc", 30, 5.0).timesteps)
    done = [tuple(skip for s2, b, skip in cache.log if s2 == s) for s in range(30)]
    assert done == predicted
    assert 0 < cache.forwards_skipped < 60
    assert ran == cache.forwards_run == out.forwards - cache.forwards_skipped
    assert not any(done[0]) and not any(done[-1])         # 1.3B mode: first and last steps always run


def test_teacache_follows_the_published_rule_on_a_known_sequence():
    spec = catalog.get("wan2.1-t2v-1.3b")
    coef = stepcache.TEA_TABLES["wan2.1-t2v-1.3b"].coefficients
    cache = stepcache.make_cache("teacache", spec, 6, threshold=0.1)
    seq = [torch.full((1, 4), v) for v in (1.0, 1.02, 1.04, 1.06, 1.08, 1.10)]
    got = [cache.decide_branch(i, "cond", m) for i, m in enumerate(seq)]
    # step 0 and the last step always run; steps 1-4: acc += poly(mean|Δ| / mean|prev|), skip while < 0.1
    acc, want = 0.0, [False]
    for i in range(1, 5):
        rel = 0.02 / (1.0 + 0.02 * (i - 1))
        acc += sum(c * rel ** (4 - k) for k, c in enumerate(coef))
        want.append(acc < 0.1)
        if not want[-1]:
            acc = 0.0
    want.append(False)
    assert got == want
    assert any(got) and not all(got[1:5])
