"""LoRAs on tiny Wan models: every key layout equals merging the weights beforehand, on every weight path
(fp32, bf16, fp8, block swap, one A14B expert at a time), equals diffusers' load_lora_weights, and bad
input gets one message naming the field."""
from __future__ import annotations

import copy
import math
import shutil

import pytest
import torch

from wan_app import catalog, tiny, tiny_lora
from wan_app.blockswap import BlockSwapper
from wan_app.errors import UserError
from wan_app.fp8 import FP8, ScaledFp8Linear, store_fp8_scaled
from wan_app.lora import (PRESETS, LoraChoice, LoraLinear, attach, check_strength, choices_from_metadata, find_loras,
                          group_items, identify, load_lora, lora_id, parse_lora_arg, per_expert, presets_for, resolve)
from wan_app.lora import presets as presets_mod
from wan_app.lora import weights as weights_mod
from wan_app.lora.select import changed_files
from wan_app.memory import apply_plan
from wan_app.plan_types import Plan
from wan_app.sampling import official_schedule, raw_sigmas, switch_step

T21 = catalog.get(tiny.T21)
A14 = catalog.get(tiny.A14)


# ---- helpers ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base():
    return tiny._transformer(16, 1)


def shapes_of(model) -> dict:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


_INPUTS = {}


def forward(model, seed=0, dtype=None) -> torch.Tensor:
    if seed not in _INPUTS:
        g = torch.Generator().manual_seed(seed)
        _INPUTS[seed] = (torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 12, tiny.TEXT_DIM, generator=g))
    x, ctx = _INPUTS[seed]
    dt = dtype or next(p.dtype for p in model.parameters() if p.dtype.itemsize >= 2)
    with torch.no_grad():
        return model(hidden_states=x.to(dt), timestep=torch.tensor([500]), encoder_hidden_states=ctx.to(dt),
                     return_dict=False)[0].float()


def merged(model, loras: list[tuple[tiny_lora.TinyLora, float]]):
    """The reference: a copy whose weights are W + s·(α/r)·up·down, plus s·diff, computed here from the
    ground truth (not through wan_app.lora)."""
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    with torch.no_grad():
        for lora, s in loras:
            for m, (down, up, _) in lora.low_rank.items():
                params[f"{m}.weight"] += s * lora.scale(m) * (up @ down)
            for p, d in lora.deltas.items():
                params[p] += s * d
    return out


def rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def fp32_close(a, b) -> bool:
    return torch.allclose(a, b, atol=1e-5, rtol=1e-5)


# ---- every layout equals the merged weights ---------------------------------------------------------
@pytest.mark.parametrize("layout", tiny_lora.LAYOUTS)
@pytest.mark.parametrize("s", [0.7, -1.3])
def test_every_layout_at_strength_s_equals_the_weights_merged_beforehand(base, tmp_path, layout, s):
    model = copy.deepcopy(base)
    path = tmp_path / f"{layout}.safetensors"
    carried = tiny_lora.write(tiny_lora.make(shapes_of(model), seed=3), layout, path)
    weights = load_lora(path, model)
    assert not weights.unmatched, weights.notice()
    expected = forward(merged(model, [(carried, s)]))
    assert rel(expected, forward(base)) > 0.05                 # the LoRA really changes the output
    handle = attach(model, [(weights, s)], dtype=torch.float32)
    assert fp32_close(forward(model), expected)
    handle.remove()
    assert torch.equal(forward(model), forward(base))


def test_norm_modulation_and_head_deltas_are_applied_not_dropped(base, tmp_path):
    """diffusers drops these (norm .diff as 'zeroed values', diff_m, other .diff); LightX2V applies them."""
    model = copy.deepcopy(base)
    lora = tiny_lora.make(shapes_of(model), seed=4)
    only_deltas = tiny_lora.TinyLora({}, {p: d for p, d in lora.deltas.items() if not p.endswith(".bias")})
    path = tmp_path / "deltas.safetensors"
    tiny_lora.write(only_deltas, "lightx2v", path)
    w = load_lora(path, model)
    assert {"blocks.0.norm2.weight", "blocks.1.scale_shift_table", "proj_out.weight",
            "patch_embedding.weight"} <= set(w.deltas)
    attach(model, [(w, 1.0)], dtype=torch.float32)
    assert fp32_close(forward(model), forward(merged(base, [(only_deltas, 1.0)])))


def test_strength_zero_is_identical_to_no_lora(base, tmp_path):
    model = copy.deepcopy(base)
    path = tmp_path / "l.safetensors"
    tiny_lora.write(tiny_lora.make(shapes_of(model)), "comfyui", path)
    handle = attach(model, [(load_lora(path, model), 0.0)])
    assert not any(isinstance(m, LoraLinear) for m in model.modules()) and handle.bytes == 0
    assert torch.equal(forward(model), forward(base))


def test_several_loras_add_up_each_with_its_own_strength(base, tmp_path):
    model = copy.deepcopy(base)
    a = tiny_lora.write(tiny_lora.make(shapes_of(model), seed=5), "comfyui", tmp_path / "a.safetensors")
    b = tiny_lora.write(tiny_lora.make(shapes_of(model), seed=6, rank=2, alpha=None), "kohya",
                        tmp_path / "b.safetensors")
    attach(model, [(load_lora(tmp_path / "a.safetensors", model), 0.5),
                   (load_lora(tmp_path / "b.safetensors", model), -0.8)], dtype=torch.float32)
    assert fp32_close(forward(model), forward(merged(base, [(a, 0.5), (b, -0.8)])))


# ---- weight paths: bf16, fp8, block swap, A14B ------------------------------------------------------
def _lora(base, tmp_path, **kw):
    path = tmp_path / "p.safetensors"
    carried = tiny_lora.write(tiny_lora.make(shapes_of(base), seed=7, **kw), "comfyui", path)
    return path, carried


def test_bf16_and_fp8_weights_with_a_lora_agree_with_fp32(base, tmp_path):
    path, carried = _lora(base, tmp_path)
    ref = forward(merged(base, [(carried, 1.0)]))
    bf16 = copy.deepcopy(base).to(torch.bfloat16)
    attach(bf16, [(load_lora(path, bf16), 1.0)], dtype=torch.bfloat16)
    # fp8 after the LoRA (store_fp8_scaled converts the wrapped layer) and before it (an fp8 load)
    fp8_after = copy.deepcopy(base)
    attach(fp8_after, [(load_lora(path, fp8_after), 1.0)], dtype=torch.float32)
    store_fp8_scaled(fp8_after)
    fp8_before = copy.deepcopy(base)
    store_fp8_scaled(fp8_before)
    attach(fp8_before, [(load_lora(path, fp8_before), 1.0)], dtype=torch.float32)
    for model in (bf16, fp8_after, fp8_before):
        # the tolerance of tests/test_low_precision_loading.py (fp8 vs fp32 on the tiny model)
        assert rel(forward(model), ref) < 0.05
    for model in (fp8_after, fp8_before):
        wrapped = [m for m in model.blocks.modules() if isinstance(m, LoraLinear)]
        assert wrapped and all(isinstance(m.lora_base, ScaledFp8Linear) and m.lora_base.weight.dtype == FP8
                               for m in wrapped)
        # no full-size 16-bit copy: only rank-4 factors and bias deltas sit next to the fp8 weights
        assert all(m.lora_diff is None and m.lora_down.shape[0] == 4 for m in wrapped)


@pytest.mark.parametrize("weight_dtype", ["bf16", "fp16", "fp8"])
def test_plans_storing_16_bit_or_fp8_weights_run_the_lora_close_to_fp32(base, tmp_path, weight_dtype):
    """Through wan_app.memory: 16-bit storage upcast per layer to the fp32 compute dtype, or fp8 + scale."""
    path, carried = _lora(base, tmp_path)
    ref = forward(merged(base, [(carried, 1.0)]))
    model = copy.deepcopy(base)
    attach(model, [(load_lora(path, model), 1.0)], dtype=torch.float32)
    comps = type("C", (), dict(transformer=model, transformer_2=None, vae=None, text_encoder=None,
                               tokenizer=None, spec=T21))()
    placement = apply_plan(_plan(weight_dtype=weight_dtype, blocks_swapped=1), comps, notify=lambda m: None)
    placement.activate("only")
    stored = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": FP8}[weight_dtype]
    assert model.blocks[0].attn1.to_q.lora_base.weight.dtype == stored
    assert rel(forward(model, dtype=torch.float32), ref) < (0.05 if weight_dtype == "fp8" else 0.01)
    placement.release()


def test_swapped_and_resident_blocks_give_identical_output_and_the_lora_travels_with_its_block(base, tmp_path):
    path, _ = _lora(base, tmp_path)
    resident = copy.deepcopy(base)
    attach(resident, [(load_lora(path, resident), 1.0)])
    plain = copy.deepcopy(base)
    plain_swap = BlockSwapper(plain, plain.blocks, 1, "cpu").install()
    swapped = copy.deepcopy(base)
    handle = attach(swapped, [(load_lora(path, swapped), 1.0)])
    swapper = BlockSwapper(swapped, swapped.blocks, 1, "cpu").install()
    assert torch.equal(forward(swapped), forward(resident))
    assert swapper.transfers > 0
    # the swapper carries the block's LoRA tensors: its bytes grow by exactly handle.block_bytes
    assert handle.block_bytes > 0
    assert swapper.swapped_bytes() - plain_swap.swapped_bytes() == handle.block_bytes
    # and the planner can know it from the header, before loading (fp32 here: 4 bytes per element)
    assert identify(path).block_bytes(4) == handle.block_bytes and identify(path).attached_bytes(4) == handle.bytes


def test_a_lora_on_some_blocks_gives_every_block_the_same_tensor_shapes(base, tmp_path):
    """The CUDA swapper copies each swapped block into one of two fixed slots and refuses blocks of
    different shapes; a LoRA that skips a block gets zeros there."""
    model = copy.deepcopy(base)
    path = tmp_path / "b0.safetensors"
    carried = tiny_lora.write(tiny_lora.make(shapes_of(model), seed=8, blocks=[0], head=False), "comfyui", path)
    attach(model, [(load_lora(path, model), 1.0)], dtype=torch.float32)
    layouts = [[(tuple(t.shape), t.dtype) for t in list(b.parameters()) + list(b.buffers())] for b in model.blocks]
    assert layouts[0] == layouts[1]
    assert fp32_close(forward(model), forward(merged(base, [(carried, 1.0)])))


def test_a_swapped_plan_through_memory_gives_the_resident_output(base, tmp_path):
    path, _ = _lora(base, tmp_path)
    outs = []
    for swapped in (0, 2):
        model = copy.deepcopy(base)
        attach(model, [(load_lora(path, model), 1.0)])
        comps = type("C", (), dict(transformer=model, transformer_2=None, vae=None, text_encoder=None,
                                   tokenizer=None, spec=T21))()
        placement = apply_plan(_plan(blocks_swapped=swapped), comps, notify=lambda m: None)
        placement.activate("only")
        outs.append(forward(model))
        placement.release()
    assert torch.equal(outs[0], outs[1])


def _plan(**kw) -> Plan:
    p = dict(device="cpu", compute_dtype="fp32", weight_dtype="fp32", text_encoder_device="cpu",
             text_encoder_dtype="fp32", blocks_total=2, blocks_swapped=0, attention_backend="native",
             vae_tiling=False, max_frames=9)
    p.update(kw)
    return Plan(**p)


def test_attaching_after_the_swapper_is_installed_is_refused(base, tmp_path):
    path, _ = _lora(base, tmp_path)
    model = copy.deepcopy(base)
    BlockSwapper(model, model.blocks, 1, "cpu").install()
    with pytest.raises(RuntimeError, match="before the memory plan"):
        attach(model, [(load_lora(path, model), 1.0)])


def _a14b_files(tmp_path):
    d = tmp_path / "models" / "loras"
    shapes = shapes_of(tiny._transformer(16, 2))
    high = tiny_lora.write(tiny_lora.make(shapes, seed=21), "comfyui", d / "tiny_a14b_high_noise_lora.safetensors")
    low = tiny_lora.write(tiny_lora.make(shapes, seed=22), "comfyui", d / "tiny_a14b_low_noise_lora.safetensors")
    return tmp_path / "models", high, low


def test_a14b_with_one_expert_resident_loads_each_experts_file_and_skips_strength_zero(tmp_path):
    models, high, _ = _a14b_files(tmp_path)
    uses = resolve([LoraChoice("tiny_a14b_high+low_noise_lora", 0.8, 0.0)], A14, find_loras([models]))
    plan = per_expert(uses)
    assert set(plan) == {"high"}                      # strength 0: the low expert does not load it
    ref = tiny.reference_components(tiny.A14)
    expected_high = forward(merged(ref.transformer, [(high, 0.8)]))
    expected_low = forward(ref.transformer_2)
    comps = tiny.reference_components(tiny.A14)
    loaded = []

    def with_loras(model, which):
        ws = [(load_lora(p, model), s) for p, s in plan.get(which, [])]
        loaded.append((which, len(ws)))
        attach(model, ws, dtype=torch.float32)
        return model

    with_loras(comps.transformer, "high")
    comps.transformer_2 = None                        # "one expert resident": the low one loads later
    placement = apply_plan(_plan(experts_resident="one", blocks_swapped=1), comps, notify=lambda m: None,
                           load_expert=lambda which: with_loras(tiny.reference_components(tiny.A14).transformer_2,
                                                                which))
    placement.activate("high")
    assert fp32_close(forward(comps.transformer), expected_high)
    placement.activate("low")
    assert torch.equal(forward(comps.transformer_2), expected_low)
    assert loaded == [("high", 1), ("low", 0)]
    placement.release()


# ---- diffusers parity -------------------------------------------------------------------------------
# What diffusers' converters read: kohya (musubi) needs every block module with an alpha and nothing
# else; the others take bias deltas too, but an alpha on the head (`head.head.alpha`) makes the
# non-diffusers converter raise. Norm / modulation / head weight deltas it drops (see above).
_PARITY = {"comfyui": dict(extras="bias", head=False), "lightx2v": dict(extras="bias"), "ai-toolkit": dict(extras="bias"),
           "kohya": dict(extras=None, head=False), "diffusers": dict(extras="bias")}


@pytest.mark.parametrize("layout", tiny_lora.LAYOUTS)
def test_equals_diffusers_load_lora_weights(tmp_path, layout):
    pytest.importorskip("peft", reason="diffusers' load_lora_weights needs peft (requirements-test.txt)")
    from diffusers import WanPipeline
    ref = tiny.reference_components(tiny.T21)
    path = tmp_path / f"{layout}.safetensors"
    tiny_lora.write(tiny_lora.make(shapes_of(ref.transformer), seed=9, **_PARITY[layout]), layout, path)
    ours = copy.deepcopy(ref.transformer)
    attach(ours, [(load_lora(path, ours), 0.6)], dtype=torch.float32)
    pipe = WanPipeline(tokenizer=ref.tokenizer, text_encoder=ref.text_encoder, transformer=ref.transformer,
                       vae=ref.vae, scheduler=None)
    pipe.load_lora_weights(str(path), adapter_name="x")
    pipe.transformer.set_adapters(["x"], [0.6])
    assert fp32_close(forward(ours), forward(pipe.transformer))


def test_a14b_pair_equals_diffusers_with_load_into_transformer_2(tmp_path):
    pytest.importorskip("peft", reason="diffusers' load_lora_weights needs peft (requirements-test.txt)")
    from diffusers import WanPipeline
    ref = tiny.reference_components(tiny.A14)
    d = tmp_path / "models" / "loras"
    for seed, e in ((31, "high"), (32, "low")):
        tiny_lora.write(tiny_lora.make(shapes_of(ref.transformer), seed=seed, **_PARITY["comfyui"]), "comfyui",
                        d / f"pair_{e}_noise.safetensors")
    uses = resolve([LoraChoice("pair_high+low_noise", 0.9, 0.4)], A14, find_loras([tmp_path / "models"]))
    plan = per_expert(uses)
    ours = {"high": copy.deepcopy(ref.transformer), "low": copy.deepcopy(ref.transformer_2)}
    for which, model in ours.items():
        attach(model, [(load_lora(p, model), s) for p, s in plan[which]], dtype=torch.float32)
    pipe = WanPipeline(tokenizer=ref.tokenizer, text_encoder=ref.text_encoder, transformer=ref.transformer,
                       transformer_2=ref.transformer_2, vae=ref.vae, scheduler=None, boundary_ratio=0.875)
    pipe.load_lora_weights(str(d / "pair_high_noise.safetensors"), adapter_name="h")
    pipe.load_lora_weights(str(d / "pair_low_noise.safetensors"), adapter_name="l", load_into_transformer_2=True)
    pipe.transformer.set_adapters(["h"], [0.9])
    pipe.transformer_2.set_adapters(["l"], [0.4])
    assert fp32_close(forward(ours["high"]), forward(pipe.transformer))
    assert fp32_close(forward(ours["low"]), forward(pipe.transformer_2))


# ---- bad input --------------------------------------------------------------------------------------
def test_a_lora_for_another_base_is_refused_before_loading_naming_both_shapes(tmp_path, monkeypatch):
    monkeypatch.setattr(weights_mod, "_read", lambda *a: pytest.fail("tensors were read"))
    lora13 = tiny_lora.foreign(tmp_path / "wan13b_style.safetensors", 1536, 8960)
    info = identify(lora13)
    assert info.fits == ("wan2.1-t2v-1.3b",) and info.base == "Wan2.1 1.3B"
    for spec_id in ("wan2.1-t2v-14b", "wan2.2-ti2v-5b"):
        spec = catalog.get(spec_id)
        with pytest.raises(UserError) as e:
            info.check_fits(spec)
        assert e.value.field == "lora" and "1536" in str(e.value) and str(spec.arch.dim) in str(e.value)
        with pytest.raises(UserError) as e:
            load_lora(lora13, spec)
        assert "1536×1536" in str(e.value) and f"{spec.arch.dim}×{spec.arch.dim}" in str(e.value)
    lora14 = tiny_lora.foreign(tmp_path / "wan21_14b.safetensors", 5120, 13824)
    with pytest.raises(UserError, match="5120.*3072"):
        resolve([LoraChoice(str(lora14))], catalog.get("wan2.2-ti2v-5b"), [])


def test_a_truncated_or_corrupt_lora_gets_one_message_naming_the_file(base, tmp_path):
    good = tmp_path / "models" / "loras" / "good.safetensors"
    tiny_lora.write(tiny_lora.make(shapes_of(base)), "comfyui", good)
    cut = good.with_name("cut.safetensors")
    cut.write_bytes(good.read_bytes()[:-100])
    junk = good.with_name("junk.safetensors")
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    for bad in (cut, junk):
        with pytest.raises(UserError) as e:
            load_lora(bad, base)
        assert e.value.field == "lora" and bad.name in str(e.value)
    listed = {f.name: f for f in find_loras([tmp_path / "models"])}
    assert listed["good.safetensors"].problem is None
    assert "cut.safetensors" in listed["cut.safetensors"].problem and "truncated" in listed["cut.safetensors"].problem
    assert listed["junk.safetensors"].problem


@pytest.mark.parametrize("bad", ["abc", 4.5, -4.01, float("nan"), None])
def test_a_strength_outside_minus_4_to_4_or_not_a_number_is_refused_naming_the_field(base, tmp_path, bad):
    with pytest.raises(UserError) as e:
        check_strength(bad, "lora strength")
    assert e.value.field == "lora strength" and "-4 to 4" in e.value.fix
    path, _ = _lora(base, tmp_path)
    with pytest.raises(UserError):
        attach(copy.deepcopy(base), [(load_lora(path, base), bad)])


def test_lora_argument_parses_strengths_and_names_the_field_when_they_are_wrong():
    assert parse_lora_arg(r"C:\loras\x.safetensors:0.8:0.5") == LoraChoice(r"C:\loras\x.safetensors", 0.8, 0.5)
    assert parse_lora_arg("my pair:0.5") == LoraChoice("my pair", 0.5, None)
    assert parse_lora_arg("x.safetensors") == LoraChoice("x.safetensors", 1.0, None)
    with pytest.raises(UserError) as e:
        parse_lora_arg("x.safetensors:strong")
    assert e.value.field == "--lora strength"
    with pytest.raises(UserError) as e:
        parse_lora_arg("x.safetensors:1:1:1")
    assert e.value.field == "--lora"


def test_a_lora_whose_keys_match_nothing_is_refused(base, tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "sdxl.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(4.0)}, str(path))
    with pytest.raises(UserError, match="0 of 3 tensors match this model"):
        load_lora(path, base)


def test_unknown_keys_are_counted_and_named_in_a_notice(base, tmp_path):
    from safetensors.torch import load_file, save_file
    path = tmp_path / "extra.safetensors"
    tiny_lora.write(tiny_lora.make(shapes_of(base)), "comfyui", path)
    sd = load_file(str(path))
    sd["diffusion_model.blocks.0.self_attn.q.dora_scale"] = torch.ones(1, 32)
    sd["diffusion_model.blocks.7.self_attn.q.lora_down.weight"] = torch.zeros(4, 32)
    save_file(sd, str(path))
    w = load_lora(path, base)
    assert set(w.unmatched) == {"diffusion_model.blocks.0.self_attn.q.dora_scale",
                                "diffusion_model.blocks.7.self_attn.q.lora_down.weight"}
    notice = w.notice()
    assert f"2 of {len(sd)} tensors" in notice and "dora_scale" in notice and "blocks.7" in notice
    assert attach(copy.deepcopy(base), [(w, 1.0)]).notices == [notice]


# ---- finding, pairing, ids --------------------------------------------------------------------------
def test_loras_are_found_by_their_tensors_with_format_rank_base_and_pairs(tmp_path):
    models = tmp_path / "models"
    written = tiny_lora.write_all(models)
    (models / "loras" / "notes.txt").write_text("not a lora")
    found = {f.path: f for f in find_loras([models])}
    assert set(found) == set(written.values())
    assert {found[written[k]].format for k in ("comfyui", "lightx2v", "ai-toolkit")} == {"comfyui"}
    assert found[written["kohya"]].format == "kohya" and found[written["diffusers"]].format == "diffusers"
    assert all(f.rank == 4 and tiny.T21 in f.fits for f in found.values())
    assert found[written["a14b-high"]].expert == "high" and found[written["a14b-high"]].base == "the tiny test models"
    items = group_items(list(found.values()))
    pairs = [i for i in items if i.is_pair]
    assert len(pairs) == 1 and pairs[0].high.path == written["a14b-high"] and pairs[0].low.path == written["a14b-low"]
    assert len(items) == len(found) - 1


@pytest.mark.parametrize("high,low,name", [
    ("Wan2.2-Lightning_T2V-A14B-4steps-lora_HIGH_fp16.safetensors",
     "Wan2.2-Lightning_T2V-A14B-4steps-lora_LOW_fp16.safetensors", "Wan2.2-Lightning_T2V-A14B-4steps-lora_high+low_fp16"),
    ("Seko-V1/high_noise_model.safetensors", "Seko-V1/low_noise_model.safetensors", "Seko-V1"),
    ("high_noise_model/style.safetensors", "low_noise_model/style.safetensors", "style"),
])
def test_high_and_low_files_are_picked_as_one_item(base, tmp_path, high, low, name):
    root = tmp_path / "m" / "loras"
    for n in (high, low, "low-poly_style.safetensors"):
        tiny_lora.write(tiny_lora.make(shapes_of(base), extras=None), "comfyui", root / n)
    files = find_loras([tmp_path / "m"])
    items = group_items(files)
    pair = next(i for i in items if i.is_pair)
    assert pair.name == name and pair.high.path == root / high and pair.low.path == root / low
    assert next(f for f in files if f.name == "low-poly_style.safetensors").expert is None


def test_lora_id_names_the_file_by_its_header_and_size_not_its_path(base, tmp_path):
    a = tmp_path / "a.safetensors"
    tiny_lora.write(tiny_lora.make(shapes_of(base), seed=1), "comfyui", a)
    b = tmp_path / "copy.safetensors"
    shutil.copy(a, b)
    c = tmp_path / "c.safetensors"
    tiny_lora.write(tiny_lora.make(shapes_of(base), seed=1, rank=3), "comfyui", c)
    assert lora_id(a) == lora_id(b) != lora_id(c) and len(lora_id(a)) == 64


# ---- choices ----------------------------------------------------------------------------------------
def test_choices_assign_strengths_per_expert_and_survive_the_metadata(tmp_path, base):
    models, _, _ = _a14b_files(tmp_path)
    single = models / "loras" / "style.safetensors"
    tiny_lora.write(tiny_lora.make(shapes_of(base)), "comfyui", single)
    found = find_loras([models])
    uses = resolve([LoraChoice("tiny_a14b_high+low_noise_lora", 1.0), LoraChoice("style.safetensors", 0.5, 0.25),
                    LoraChoice("tiny_a14b_high_noise_lora.safetensors", 0.7)], A14, found)
    assert [(e, f.name, s) for e, f, s in uses[0].apply] == [
        ("high", "tiny_a14b_high_noise_lora.safetensors", 1.0), ("low", "tiny_a14b_low_noise_lora.safetensors", 1.0)]
    assert [(e, s) for e, _, s in uses[1].apply] == [("high", 0.5), ("low", 0.25)]
    assert uses[2].item == "tiny_a14b_high+low_noise_lora"        # one file of a pair picks the pair
    meta = [u.metadata() for u in uses]
    assert meta[0]["files"][0]["sha256_header"] == lora_id(models / "loras" / "tiny_a14b_high_noise_lora.safetensors")
    again = resolve(choices_from_metadata(meta), A14, found)
    assert [u.apply for u in again] == [u.apply for u in uses] and changed_files(meta, again) == []
    # another file under the same name (the header hash sees shapes, dtypes, metadata and size, not values)
    tiny_lora.write(tiny_lora.make(shapes_of(base), rank=3), "comfyui", single)
    assert changed_files(meta, resolve(choices_from_metadata(meta), A14, find_loras([models])))
    # one-expert models: one strength only, and no pairs
    with pytest.raises(UserError, match="second .low-noise. strength"):
        resolve([LoraChoice("style.safetensors", 1.0, 0.5)], T21, found)
    with pytest.raises(UserError, match="pair"):
        resolve([LoraChoice("tiny_a14b_high+low_noise_lora")], T21, found)
    with pytest.raises(UserError, match="neither a file nor a LoRA"):
        resolve([LoraChoice("nothing.safetensors")], T21, found)


# ---- presets ----------------------------------------------------------------------------------------
def test_presets_set_their_authors_schedule():
    assert {p.name for p in presets_for("wan2.2-t2v-a14b")} == {"Lightning 4 steps", "LightX2V 4 steps"}
    assert [p.name for p in presets_for("wan2.1-t2v-14b")] == ["LightX2V 4 steps"]
    for p in PRESETS.values():
        spec = catalog.get(p.model_ids[0])
        assert p.steps == 4 and p.guidance == 1.0 and p.shift == 5.0 and p.solver in ("euler", "lcm")
        # LightX2V's denoising_step_list [1000, 750, 500, 250] / 1000, before the shift
        assert raw_sigmas("euler", p.steps).tolist() == [1.0, 0.75, 0.5, 0.25]
        if spec.experts == 2:
            assert p.guidance_2 == 1.0 and {f.expert for f in p.files} == {"high", "low"}
            # the boundary reproduces the authors' boundary_step_index 2 on this schedule
            assert switch_step(official_schedule(p.solver, p.steps, p.shift), p.boundary) == p.switch_step == 2
        assert all(f.repo.startswith("lightx2v/") and f.filename.endswith(".safetensors") for f in p.files)


def test_a_missing_preset_lora_names_the_file_where_it_goes_and_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = PRESETS["lightning-4step-wan2.2-t2v-a14b"]
    models = tmp_path / "models"
    with pytest.raises(UserError) as e:
        p.require([models])
    text = str(e.value)
    assert e.value.field == "preset" and "high_noise_model.safetensors" in text and "low_noise_model" in text
    assert "https://huggingface.co/lightx2v/Wan2.2-Lightning" in text and str(models / "loras") in text
    with pytest.raises(UserError, match="offline"):
        presets_mod.download(p, models)
    for f in p.files:
        target = models / "loras" / f.dest
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"")
    assert set(p.require([models])) == {"high", "low"}
    with pytest.raises(UserError, match="choose one of: LightX2V 4 steps"):
        presets_mod.get("Lightning 4 steps", "wan2.1-t2v-14b")
    with pytest.raises(UserError, match="no few-step preset"):
        presets_mod.get("Lightning 4 steps", "wan2.1-t2v-1.3b")
    assert presets_mod.get("Lightning 4 steps", "wan2.2-t2v-a14b") is p


def test_meta_shapes_of_a_real_model_cost_no_memory():
    shapes = weights_mod.target_shapes(catalog.get("wan2.2-t2v-a14b"))
    assert shapes["blocks.39.ffn.net.0.proj.weight"] == (13824, 5120)
    assert math.prod(shapes["blocks.0.attn1.to_q.weight"]) == 5120 * 5120
