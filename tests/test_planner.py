"""The memory planner: every simulated machine gets a plan that fits, or a refusal that says why."""
from __future__ import annotations

import itertools

import pytest

from wan_app import planner, sizes
from wan_app.catalog import MODELS
from wan_app.errors import UserError
from wan_app.hardware import Hardware
from wan_app.plan_types import DiskWeights, Overrides
from wan_app.planner import explain, plan, replan_after_oom

MiB = 2**20
M13, M14, A14, M5 = (MODELS[k] for k in ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-t2v-a14b",
                                          "wan2.2-ti2v-5b"))
SIZES = {M13.id: [(832, 480)], M14.id: [(832, 480), (1280, 720)], A14.id: [(832, 480), (1280, 720)],
         M5.id: [(1280, 704)]}
# The 1.3B model is official at 480p only, but users try 720p too: the table covers it.
SIZES[M13.id].append((1280, 720))
VRAMS = (6, 8, 12, 16, 24, 48, 80)
RAMS = (16, 32, 64, 128)


# ---- sizes counted from shapes agree with WAN_FACTS --------------------------------------------
@pytest.mark.parametrize("spec, fp8_block_mib, params_b", [(M14, 335, 14.288), (M13, 44, 1.419), (M5, 156, 5.0)])
def test_block_and_model_sizes_match_wan_facts(spec, fp8_block_mib, params_b):
    assert sizes.block_gb(spec.arch, "fp8") * 1e9 / MiB == pytest.approx(fp8_block_mib, abs=1.0)
    assert sizes.total_params(spec.arch) / 1e9 == pytest.approx(params_b, rel=0.002)
    assert sizes.total_params(spec.arch) == pytest.approx(spec.params, rel=0.002)


def test_token_counts_match_wan_facts():
    assert M14.seq_len(81, 832, 480) == 32_760
    assert M14.seq_len(81, 1280, 720) == 75_600
    assert M5.seq_len(121, 1280, 704) == 27_280


def test_fourteen_b_in_bf16_is_28_6_gb_and_both_a14b_experts_57_gb():
    assert sizes.model_gb(M14.arch, "bf16") == pytest.approx(28.6, abs=0.05)
    assert 2 * sizes.model_gb(A14.arch, "bf16") == pytest.approx(57.2, abs=0.1)
    assert 2 * sizes.model_gb(A14.arch, "fp8") == pytest.approx(28.6, abs=0.1)


def test_vae_decode_peak_does_not_grow_with_frames_except_for_the_video_itself():
    a = sizes.vae_decode_gb(M14, 1280, 720, 81, tiled=False)
    b = sizes.vae_decode_gb(M14, 1280, 720, 161, tiled=False)
    video_extra = sizes.VIDEO_DEVICE_COPIES * 80 * 3 * 1280 * 720 * sizes.VAE_BYTES / 1e9
    assert b - a == pytest.approx(video_extra)
    assert sizes.vae_decode_gb(M14, 1280, 720, 81, tiled=True) < a


# ---- the table of simulated machines --------------------------------------------------------------
TABLE = [(v, r, spec, size) for v, r, spec in itertools.product(VRAMS, RAMS, (M13, M14, A14, M5))
         for size in SIZES[spec.id]]


@pytest.mark.parametrize("vram, ram, spec, size", TABLE,
                         ids=[f"{v}GB-{r}GB-{s.id}-{w}x{h}" for v, r, s, (w, h) in TABLE])
def test_every_plan_fits_its_machine_or_says_why_not(vram, ram, spec, size):
    w, h = size
    hw = Hardware.simulated(vram, ram)
    p = plan(hw, spec, w, h, spec.frames)
    if p.blocker is None:
        assert p.est_vram_gb <= vram
        assert p.est_ram_gb <= ram
        assert p.max_frames >= spec.frames
        assert 0 <= p.blocks_swapped <= p.blocks_total == spec.arch.num_layers
        assert p.device == "cuda:0" and p.attention_backend in ("sage", "flash", "sdpa")
    else:
        assert p.blocker["field"] in ("frames", "model")
        assert p.blocker["problem"] and p.blocker["fix"]
        assert any("Cannot run as asked" in r for r in p.reasons)
        if p.blocker["field"] == "frames":
            assert 1 <= p.max_frames < spec.frames
            # ... and the frame count it offers really fits.
            q = plan(hw, spec, w, h, p.max_frames)
            assert q.blocker is None and q.est_vram_gb <= vram and q.est_ram_gb <= ram
    assert (p.max_frames - 1) % 4 == 0 or p.max_frames == 0


@pytest.mark.parametrize("spec", [M13, M14, A14, M5])
@pytest.mark.parametrize("ram", RAMS)
def test_more_vram_never_means_more_block_copies_per_step(spec, ram):
    # Copies per step: each swapped block crosses once per forward, two forwards per step unless CFG
    # is batched. (A bigger card may swap *more* blocks to afford a batch of 2, yet copy fewer.)
    def copies(p):
        return p.blocks_swapped * (1 if p.cfg_batched else 2)
    for w, h in SIZES[spec.id]:
        swapped = [copies(plan(Hardware.simulated(v, ram), spec, w, h, spec.frames)) for v in VRAMS]
        assert swapped == sorted(swapped, reverse=True), swapped
        frames = [plan(Hardware.simulated(v, ram), spec, w, h, spec.frames).max_frames for v in VRAMS]
        assert frames == sorted(frames), frames


@pytest.mark.parametrize("spec", [M13, M14, A14, M5])
@pytest.mark.parametrize("vram", VRAMS + (None,))
def test_more_ram_never_forces_fp8_where_less_ram_did_not(spec, vram):
    for w, h in SIZES[spec.id]:
        dtypes = [plan(Hardware.simulated(vram, r), spec, w, h, spec.frames).weight_dtype for r in RAMS]
        fp8 = [d == "fp8" for d in dtypes]
        assert fp8 == sorted(fp8, reverse=True), dtypes


def test_the_plan_is_deterministic():
    hw = Hardware.simulated(12, 32)
    assert plan(hw, A14, 1280, 720, 81).to_dict() == plan(hw, A14, 1280, 720, 81).to_dict()


# ---- hand-worked cases ---------------------------------------------------------------------------
def test_1_3b_on_24_gb_is_all_resident_in_bf16():
    # One block, bf16: linear 8·1536² + 2·1536·8960 = 46,399,488 params → 92.8 MB (+ 41,216 small params
    # · 2 B); 30 blocks = 2.79 GB; non-block 25.8 M params = 0.05 GB.
    # Tokens 21 · 30 · 52 = 32,760. Activations per token: max(18·1536, 4·8960 + 6·1536) = 45,056 B
    # → 1.48 GB · 1.2 slack = 1.77 GB. Plus the 0.75 GB CUDA context:
    # 0.75 + 0.05 + 2.79 + 1.77 = 5.36 GB, far under 24 − 1.92 (8% margin) = 22.1 GB → nothing swapped.
    p = plan(Hardware.simulated(24, 64), M13, 832, 480, 81)
    assert (p.device, p.compute_dtype, p.weight_dtype, p.blocks_swapped) == ("cuda:0", "bf16", "bf16", 0)
    sample = planner._sample_dev(planner._machine(Hardware.simulated(24, 64)), M13,
                                 planner._Choice("bf16", 0, True, "bf16", True, "both", "sdpa", False),
                                 sizes.activation_gb(M13, 32_760, "bf16", True))
    assert sample == pytest.approx(5.36, abs=0.02)
    # The umT5 encoder (11.4 GB + 0.3 work + 0.75 context = 12.4 GB) fits alone → on the GPU first.
    assert p.text_encoder_device == "cuda:0" and p.text_encoder_dtype == "bf16"
    assert not p.vae_tiling and p.max_frames >= 81 and p.blocker is None


def test_14b_forced_bf16_on_16_gb_swaps_28_blocks():
    # bf16 block: 351,272,960 linear params · 2 + 121,344 small · 2 = 702.8 MB.
    # Non-block: 232.7 M params · 2 = 0.47 GB. Activations: max(18·5120, 4·13824 + 6·5120) = 92,160 B/token
    # · 32,760 tokens · 1.2 = 3.62 GB. Usable: 16 − max(0.5, 8% · 16 = 1.28) = 14.72 GB.
    # Sampling with K swapped: 0.75 + 0.47 + (40 − K)·0.703 + 2·0.703 (buffers) + 3.62 ≤ 14.72
    #   → (42 − K) · 0.703 ≤ 9.88 → 42 − K ≤ 14.06 → K = 28 (12 resident).
    # RAM: 28 · 0.703 = 19.7 GB pinned + 3.0 base + 11.4 umT5 kept = 34.1 GB ≤ 64·0.9 − 3.2 = 54.4 GB.
    p = plan(Hardware.simulated(16, 64), M14, 832, 480, 81, Overrides(weight_dtype="bf16"))
    # CFG batch of 2: +3.62 GB activations = ceil(3.62 / 0.703) = 6 more blocks out → 34 swapped,
    # 34 copies a step instead of 2 · 28 = 56, so the planner batches. RAM: 34 · 0.703 = 23.9 pinned.
    assert p.weight_dtype == "bf16" and p.cfg_batched and p.blocks_swapped == 28 + 6
    # The reasons explain the final plan (34 swapped, batched), not the sequential candidate (28).
    assert any("34 of 40 blocks swapped" in r for r in p.reasons)
    assert any("34 block copies per step instead of 56" in r for r in p.reasons)
    assert p.forced == ["weight_dtype"]
    assert any("forced by you" in r for r in p.reasons)
    # RAM that must fit: the 34 pinned blocks (23.9 GB) + 3.0 base + the fp32 Wan2.1 VAE (0.51 GB); umT5
    # in bf16 from a bf16 file stays memory-mapped (file pages, counted apart in est_file_gb).
    # The decoded video on the host (81 · 3 · 832 · 480 · 5 B = 0.49 GB) and the fp32 copies diffusers keeps
    # of the time embedder and norms (0.12 GB) come on top while decoding.
    assert p.est_ram_gb == pytest.approx(34 * 0.703 + 3.0 + 0.51 + 0.12 + 0.49, abs=0.2)
    assert p.est_vram_gb <= 16 - 1.28


def test_14b_on_16_gb_chooses_fp8_and_says_why():
    # bf16 would need 28 swapped blocks (above); fp8 halves every block (351.5 MB), so
    # 0.75 + 0.23 + (42 − K)·0.352 + 0.28 (upcast of two 5120×13824 linears in bf16) + 3.62 ≤ 14.72
    #   → 42 − K ≤ 27.7 → K = 15.
    p = plan(Hardware.simulated(16, 64), M14, 832, 480, 81)
    # CFG batch of 2: the doubled activations (+3.62 GB) need (42 − K)·0.352 ≤ 14.72 − 0.75 − 0.23 − 0.28
    # − 7.24 → 42 − K ≤ 17.4 → K = 25 swapped: 25 copies a step instead of 2 · 15 = 30.
    assert p.weight_dtype == "fp8" and p.cfg_batched and p.blocks_swapped == 25
    # The reasons explain the final plan (25 swapped, batched), not the sequential candidate (15).
    assert any("in bf16 is 28.6 GB" in r and "fp8 (14.3 GB), 25 of 40 blocks swapped" in r for r in p.reasons)
    assert any("25 block copies per step instead of 30" in r for r in p.reasons)


def test_8_gb_card_runs_14b_in_fp8_with_heavy_swap():
    p = plan(Hardware.simulated(8, 64), M14, 832, 480, 81)
    assert p.weight_dtype == "fp8" and p.blocks_swapped >= 30 and p.blocker is None
    # umT5 does not fit even in fp8 (6.7 + 0.3 + 0.75 = 7.8 GB > 7.36 usable) → CPU, with the cost said.
    assert p.text_encoder_device == "cpu"
    assert any("prompt encoding is slower" in r for r in p.reasons)


def test_a14b_keeps_one_expert_at_a_time_when_both_do_not_fit_in_ram():
    # fp8 files in an fp8 plan stay memory-mapped: both experts cost no anonymous RAM beyond their pinned
    # swap blocks, so a 24 GB card with 32 GB of RAM keeps both (the page cache holds what it can).
    p = plan(Hardware.simulated(24, 32), A14, 832, 480, 81, disk=DiskWeights(dit="fp8"))
    assert p.weight_dtype == "fp8" and p.experts_resident == "both" and p.blocker is None
    assert p.est_file_gb > 2 * 13 and p.est_ram_gb < 27.2
    # bf16 forced on fp8 files converts every weight: both experts would be 2 · 28.6 = 57.2 GB of
    # anonymous RAM > 64·0.9 − 3.2 = 54.4 GB usable → one expert, the other read at the switch.
    q = plan(Hardware.simulated(24, 64), A14, 832, 480, 81, Overrides(weight_dtype="bf16"),
             disk=DiskWeights(dit="fp8"))
    assert q.weight_dtype == "bf16" and q.experts_resident == "one" and q.blocker is None
    assert any("One expert at a time" in r for r in q.reasons)
    # With 128 GB of RAM both converted experts stay in RAM.
    assert plan(Hardware.simulated(24, 128), A14, 832, 480, 81, Overrides(weight_dtype="bf16"),
                disk=DiskWeights(dit="fp8")).experts_resident == "both"


def test_cpu_only_machine_runs_in_fp32_without_swap():
    p = plan(Hardware.simulated(None, 32), M13, 832, 480, 81)
    assert (p.device, p.compute_dtype, p.blocks_swapped, p.attention_backend) == ("cpu", "fp32", 0, "sdpa")
    assert p.text_encoder_device == "cpu" and p.est_vram_gb == 0.0 and p.est_ram_gb <= 32
    # 1.3B in fp32 is 5.7 GB: it fits, so no lossy storage.
    assert p.weight_dtype == "fp32"
    # 14B on 16 GB RAM: in fp8 its anonymous memory fits, but its 14.3 GB of weights do not stay in the
    # page cache beside it: the plan picks the smallest files and says they are re-read from disk.
    q = plan(Hardware.simulated(None, 16), M14, 832, 480, 81)
    assert q.blocker is None and q.weight_dtype == "fp8"
    assert any("re-reads parts of them from disk" in r for r in q.reasons)
    # On 8 GB even the anonymous memory cannot fit at 81 frames, and the plan says so instead of crashing.
    r = plan(Hardware.simulated(None, 8), M14, 832, 480, 81)
    assert r.blocker and r.blocker["field"] in ("model", "frames") and r.max_frames < 81


def test_apple_mps_never_swaps_and_never_uses_fp8():
    p = plan(Hardware.simulated(None, 32, mps=True), M13, 832, 480, 81)
    assert (p.device, p.blocks_swapped, p.weight_dtype) == ("mps", 0, "bf16") and p.blocker is None
    assert p.est_ram_gb <= 32
    big = plan(Hardware.simulated(None, 32, mps=True), M14, 832, 480, 81)
    assert big.blocker and big.weight_dtype == "bf16"         # 28.6 GB > 24 GB of Metal working set
    assert plan(Hardware.simulated(None, 128, mps=True), M14, 832, 480, 81).blocker is None
    with pytest.raises(UserError) as e:
        plan(Hardware.simulated(None, 32, mps=True), M13, 832, 480, 81, Overrides(weight_dtype="fp8"))
    assert e.value.field == "weight_dtype"


def test_gpu_without_bf16_computes_in_fp16():
    p = plan(Hardware.simulated(24, 64, cc=(7, 5)), M13, 832, 480, 81)
    assert p.compute_dtype == "fp16" and p.weight_dtype == "fp16"
    q = plan(Hardware.simulated(8, 64, cc=(7, 5)), M14, 832, 480, 81)
    assert q.weight_dtype == "fp8"
    # fp8 is upcast per layer (no fp8 matmul runs), and the reason says so rather than claiming speed.
    assert any("fp8 saves memory, not time" in r for r in q.reasons)


def test_only_fp8_files_keep_fp8_even_when_bf16_would_fit():
    p = plan(Hardware.simulated(80, 128), M14, 832, 480, 81, disk=DiskWeights(dit="fp8_scaled"))
    assert p.weight_dtype == "fp8" and any("bring back no quality" in r for r in p.reasons)
    assert plan(Hardware.simulated(80, 128), M14, 832, 480, 81).weight_dtype == "bf16"


def test_forcing_bf16_over_fp8_files_counts_the_dequantized_copy():
    same = plan(Hardware.simulated(80, 128), M14, 832, 480, 81, disk=DiskWeights(dit="bf16"))
    conv = plan(Hardware.simulated(80, 128), M14, 832, 480, 81, Overrides(weight_dtype="bf16"),
                disk=DiskWeights(dit="fp8"))
    # While loading, the bf16 copy of the whole model (28.6 GB) is anonymous RAM.
    assert conv.est_ram_gb >= 3.0 + 28.5 > same.est_ram_gb


def test_too_many_frames_are_refused_with_the_limit():
    p = plan(Hardware.simulated(12, 64), M14, 1280, 720, 401)
    assert p.blocker and p.blocker["field"] == "frames"
    assert 1 <= p.max_frames < 401 and str(p.max_frames) in p.blocker["fix"]
    with pytest.raises(UserError) as e:
        planner.require_runnable(p)
    assert e.value.field == "frames"


# ---- overrides -----------------------------------------------------------------------------------
def test_forced_no_swap_of_14b_bf16_on_8_gb_is_refused_naming_the_field():
    with pytest.raises(UserError) as e:
        plan(Hardware.simulated(8, 64), M14, 832, 480, 81, Overrides(weight_dtype="bf16", blocks_swapped=0))
    assert e.value.field == "blocks_swapped"
    assert "GB" in e.value.problem and "blocks_swapped=" in e.value.fix


def test_forced_bf16_for_both_a14b_experts_on_16_gb_ram_is_refused():
    with pytest.raises(UserError) as e:
        plan(Hardware.simulated(24, 16), A14, 832, 480, 81, Overrides(weight_dtype="bf16", experts_resident="both"))
    assert e.value.field in ("weight_dtype", "experts_resident") and "RAM" in e.value.problem
    with pytest.raises(UserError) as e:
        plan(Hardware.simulated(24, 16), A14, 832, 480, 81, Overrides(weight_dtype="bf16"))
    assert e.value.field == "weight_dtype" and "fp8" in e.value.fix


def test_possible_overrides_are_honoured_and_listed():
    ov = Overrides(blocks_swapped=10, text_encoder="cpu", vae_tiling=True, attention="sdpa",
                   experts_resident="one")
    p = plan(Hardware.simulated(80, 128), A14, 832, 480, 81, ov)
    assert (p.blocks_swapped, p.text_encoder_device, p.vae_tiling, p.attention_backend,
            p.experts_resident) == (10, "cpu", True, "sdpa", "one")
    assert set(p.forced) == {"blocks_swapped", "text_encoder", "vae_tiling", "attention", "experts_resident"}
    assert sum("forced by you" in r for r in p.reasons) >= 4


@pytest.mark.parametrize("ov, field", [
    (Overrides(weight_dtype="int4"), "weight_dtype"),
    (Overrides(blocks_swapped=41), "blocks_swapped"),
    (Overrides(blocks_swapped=-1), "blocks_swapped"),
    (Overrides(text_encoder="tpu"), "text_encoder"),
    (Overrides(attention="sage"), "attention"),          # its probe failed on this machine
    (Overrides(experts_resident="three"), "experts_resident"),
])
def test_invalid_overrides_are_refused_naming_the_field(ov, field):
    with pytest.raises(UserError) as e:
        plan(Hardware.simulated(24, 64), M14, 832, 480, 81, ov)
    assert e.value.field == field


def test_swapping_on_a_cpu_only_machine_is_refused():
    with pytest.raises(UserError) as e:
        plan(Hardware.simulated(None, 64), M13, 832, 480, 81, Overrides(blocks_swapped=4))
    assert e.value.field == "blocks_swapped"


# ---- attention -----------------------------------------------------------------------------------
def test_sage_is_preferred_when_it_ran():
    hw = Hardware.simulated(24, 64, attention=("sage", "flash", "sdpa_flash", "sdpa"))
    assert plan(hw, M13, 832, 480, 81).attention_backend == "sage"
    hw = Hardware.simulated(24, 64, attention=("flash", "sdpa_flash", "sdpa"))
    assert plan(hw, M13, 832, 480, 81).attention_backend == "flash"


def test_failed_sage_and_flash_fall_back_to_sdpa_with_the_reason():
    hw = Hardware.simulated(24, 64, attention=("sdpa_flash", "sdpa_efficient", "sdpa"),
                            attention_failures={"sage": "ImportError: No module named 'triton'",
                                                "flash": "OSError: undefined symbol in flash_attn_2_cuda"})
    p = plan(hw, M13, 832, 480, 81)
    assert p.attention_backend == "sdpa"
    line = next(r for r in p.reasons if r.startswith("Attention"))
    assert "No module named 'triton'" in line and "undefined symbol" in line


def test_without_a_memory_efficient_kernel_the_quadratic_attention_limits_frames():
    good = plan(Hardware.simulated(24, 64), M13, 832, 480, 81)
    math_only = plan(Hardware.simulated(24, 64, attention=("sdpa",)), M13, 832, 480, 81)
    assert math_only.max_frames < good.max_frames
    assert any("O(tokens²)" in r for r in math_only.reasons)


# ---- after an OOM --------------------------------------------------------------------------------
def test_replan_after_oom_gives_strictly_more_room_then_none():
    hw = Hardware.simulated(16, 128)
    p = plan(hw, M14, 832, 480, 81)
    assert p.text_encoder_device == "cuda:0" and not p.vae_tiling
    seen = 0
    while True:
        q = replan_after_oom(p, hw, M14, 832, 480, 81)
        if q is None:
            break
        more_swap = q.blocks_swapped > p.blocks_swapped
        assert more_swap or (q.vae_tiling and not p.vae_tiling) or (
            q.text_encoder_device == "cpu" != p.text_encoder_device)
        assert q.blocks_swapped >= p.blocks_swapped and (q.vae_tiling or not p.vae_tiling)
        if p.blocks_swapped < p.blocks_total:
            resident = p.blocks_total - p.blocks_swapped
            assert q.blocks_swapped == min(p.blocks_total, p.blocks_swapped + max(4, -(-resident // 2)))
        assert q.reasons[-1].startswith("After an out-of-memory error")
        p, seen = q, seen + 1
        assert seen < 10
    assert p.blocks_swapped == p.blocks_total and p.vae_tiling and p.text_encoder_device == "cpu"
    assert seen >= 2


def test_replan_after_oom_on_cpu_has_nothing_to_give_once_tiled():
    hw = Hardware.simulated(None, 64)
    p = plan(hw, M13, 832, 480, 81, Overrides(vae_tiling=True))
    assert replan_after_oom(p, hw, M13, 832, 480, 81) is None


# ---- explain -------------------------------------------------------------------------------------
def test_explain_shows_the_machine_the_choices_and_every_reason():
    hw = Hardware.simulated(12, 32)
    p = plan(hw, A14, 1280, 720, 81, Overrides(vae_tiling=True))
    text = explain(hw, p)
    assert "RAM: 32.0 GB" in text and "blocks swapped" in text and f"{p.blocks_swapped} of 40" in text
    assert "(forced)" in text
    for r in p.reasons:
        assert r in text


def test_tiny_test_models_fit_a_small_cpu_machine():
    # The tiny models ship a tiny umT5 and VAE: the 11 GB real encoder must not be counted for them.
    for mid in ("tiny-wan2.1-t2v", "tiny-wan2.2-t2v-a14b", "tiny-wan2.2-ti2v-5b"):
        p = plan(Hardware.simulated(None, 8), MODELS[mid], 64, 64, 9)
        assert p.blocker is None and p.est_ram_gb < 4, (mid, p.est_ram_gb)


# ---- CFG as one batch of 2 -------------------------------------------------------------------
def test_cfg_is_batched_when_it_saves_block_copies_and_fits():
    """14B at 832x480 on 16 GB / 64 GB: sequential CFG swaps k=15 blocks → 30 copies a step.
    Batched, the doubled activations (+3.6 GB ≈ 11 blocks of 352 MB) push 26 out → 26 copies < 30."""
    from wan_app.planner import plan as make_plan
    hw = Hardware.simulated(vram_gb=16, ram_gb=64)
    p = make_plan(hw, MODELS["wan2.1-t2v-14b"], 832, 480, 81)
    assert p.cfg_batched
    assert 15 < p.blocks_swapped < 30
    assert p.est_vram_gb <= 16
    assert any("batch of 2" in r for r in p.reasons)


def test_cfg_stays_sequential_when_batching_would_cost_more_copies_or_nothing_is_swapped():
    from wan_app.planner import plan as make_plan
    # 720p on 24 GB: 7 swapped → 14 copies sequential; batching needs 31 swapped (> 14): not worth it
    p = make_plan(Hardware.simulated(vram_gb=24, ram_gb=64), MODELS["wan2.1-t2v-14b"], 1280, 720, 81)
    assert p.blocks_swapped > 0 and not p.cfg_batched
    # nothing swapped (1.3B on 24 GB) or no GPU: nothing to save
    assert not make_plan(Hardware.simulated(vram_gb=24, ram_gb=64), MODELS["wan2.1-t2v-1.3b"], 832, 480, 81).cfg_batched
    assert not make_plan(Hardware.simulated(vram_gb=None, ram_gb=64), MODELS["tiny-wan2.1-t2v"], 64, 64, 9).cfg_batched


def test_a_converted_checkpoint_is_counted_in_ram_for_the_whole_run():
    """1.3B on 24 GB: an fp16 file run in bf16 is converted into an anonymous 1.419e9 · 2 B = 2.84 GB
    copy that stays as the weights' CPU home all run long; a bf16 file's home is its own memory-mapped
    pages, which the kernel can drop, so only that file is free in RAM terms."""
    hw = Hardware.simulated(vram_gb=24, ram_gb=64)
    same = plan(hw, M13, 832, 480, 81, disk=DiskWeights(dit="bf16"))
    converted = plan(hw, M13, 832, 480, 81, disk=DiskWeights(dit="fp16"))
    assert (same.weight_dtype, converted.weight_dtype) == ("bf16", "bf16")
    assert converted.est_ram_gb - same.est_ram_gb == pytest.approx(2.84, abs=0.15)


def test_fp8_plans_say_which_matmul_runs_from_the_probe():
    ada = plan(Hardware.simulated(12, 64, cc=(8, 9)), M14, 832, 480, 81)
    ampere = plan(Hardware.simulated(12, 64, cc=(8, 6)), M14, 832, 480, 81)
    assert ada.weight_dtype == ampere.weight_dtype == "fp8"
    assert ada.fp8_matmul and any("torch._scaled_mm runs" in r for r in ada.reasons)
    assert not ampere.fp8_matmul and any("fp8 saves memory, not time" in r for r in ampere.reasons)
    # a GPU whose probe failed at start (e.g. an old driver) is planned with the upcast, whatever its cc
    hw = Hardware.simulated(12, 64, cc=(9, 0))
    hw.gpus[0].scaled_mm = False
    assert not plan(hw, M14, 832, 480, 81).fp8_matmul


def test_i2v_14b_counts_its_image_attention_weights_and_the_clip_encoder():
    """Wan2.1 I2V blocks carry k_img / v_img (2·5120² each block): 16.4 B params against T2V's 14.3 B; the
    fp32 CLIP ViT-H (0.632 B params, 2.5 GB) lives in RAM and encodes on the device before sampling."""
    i2v = MODELS["wan2.1-i2v-14b-480p"]
    assert sizes.total_params(i2v.arch, i2v.clip) / 1e9 == pytest.approx(16.4, abs=0.05)
    hw = Hardware.simulated(24, 64)
    p, q = plan(hw, i2v, 832, 480, 81), plan(hw, M14, 832, 480, 81)
    assert p.est_ram_gb - q.est_ram_gb == pytest.approx(2.53, abs=0.1)
