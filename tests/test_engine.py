"""End to end on CPU with tiny random weights: every on-disk layout → CLI → mp4; the engine equals
diffusers' WanPipeline on the official schedule; A14B switches at the official step; cancel; OOM."""
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline

from wan_app import events, sampler
from wan_app.engine import Engine
from wan_app.hardware import Hardware
from wan_app.media import probe, read_video
from wan_app.request import Request
from tests.support import clip, denoise, load

ROOT = Path(__file__).resolve().parents[1]
CPU = Hardware.simulated(vram_gb=None, ram_gb=24.0)


def run_events(engine, req, **kw):
    return list(engine.run(req, **kw))


def only(evs, kind):
    return [e for e in evs if isinstance(e, kind)]


def finished(evs):
    done = only(evs, events.Finished)
    assert done, f"run did not finish: {[e for e in evs if isinstance(e, (events.Failed, events.Notice))]}"
    return done[0]


# ---- the real entry point (every layout runs through the CLI's main() in tests/test_pipeline.py) -----
def test_app_py_generate_subprocess_writes_the_video(tiny_root, tmp_path):
    info = tiny_root["comfyui-fp8-scaled"]
    out = tmp_path / "cli.mp4"
    r = subprocess.run([sys.executable, "app.py", "generate", "--models-dir", str(info.path),
                        "--model", info.model_id, "--prompt", "waves", "--frames", "9", "--size", "64x64",
                        "--steps", "2", "--seed", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote" in r.stdout and probe(out).frames == 9


def test_models_command_lists_ids_of_runnable_models(tiny_root):
    r = subprocess.run([sys.executable, "app.py", "models", "--ids", "--models-dir",
                        str(tiny_root["diffusers-a14b"].path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["tiny-wan2.2-t2v-a14b"]


# ---- parity with diffusers' WanPipeline -----------------------------------------------------
class OfficialSigmaUniPC(UniPCMultistepScheduler):
    """The pipeline's scheduler fed the official σ (linspace from float32(0.999) to 0), so the only
    thing compared is our loop against the pipeline's."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        s_max = torch.tensor(0.999, dtype=torch.float32).item()
        raw = np.linspace(s_max, 0, num_inference_steps + 1)[:-1]
        super().set_timesteps(sigmas=raw, device=device)


@pytest.mark.parametrize("model_id", ["tiny-wan2.1-t2v", "tiny-wan2.2-t2v-a14b"])
def test_engine_latents_equal_wanpipeline_on_the_official_schedule(tiny_root, model_id, tmp_path):
    layout = {"tiny-wan2.1-t2v": "diffusers-t2v", "tiny-wan2.2-t2v-a14b": "diffusers-a14b"}[model_id]
    engine = Engine([tiny_root[layout].path], tmp_path, hardware=CPU)
    req = Request(model=model_id, prompt="a fox in snow", frames=9, width=64, height=64, steps=10,
                  seed=11)
    job = clip(engine, req, tmp_path / "x.mp4")
    host = load(engine, job)
    comps = host.components
    cond, uncond = host.encode(job.request.prompt, job.request.negative_prompt)
    noise = sampler.initial_noise(job.spec, job.request)
    ours = denoise(engine, job, noise.clone(), cond, uncond)

    r = job.request
    sched = OfficialSigmaUniPC(num_train_timesteps=1000, prediction_type="flow_prediction",
                               use_flow_sigmas=True, flow_shift=r.shift, solver_order=2,
                               solver_type="bh2", predict_x0=True, lower_order_final=True,
                               final_sigmas_type="zero")
    pipe = WanPipeline(tokenizer=comps.tokenizer, text_encoder=comps.text_encoder, vae=comps.vae,
                       scheduler=sched, transformer=comps.transformer, transformer_2=comps.transformer_2,
                       boundary_ratio=r.boundary)
    theirs = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(),
                  height=64, width=64, num_frames=9, num_inference_steps=r.steps,
                  guidance_scale=r.guidance, guidance_scale_2=r.guidance_2,
                  output_type="latent").frames
    assert ours.shape == theirs.shape
    diff = (ours - theirs.float()).abs().max().item()
    print(f"max abs diff engine vs WanPipeline ({model_id}): {diff:.3e}")
    assert diff <= 1e-4, diff
    # and the comparison is not vacuous: the result moved far from the starting noise, and the
    # pipeline on diffusers' stock flow schedule (σ from 1, not from the official float32 0.999) differs
    assert (ours - noise).abs().max().item() > 0.1
    pipe.scheduler = UniPCMultistepScheduler.from_config(sched.config)
    stock = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(),
                 height=64, width=64, num_frames=9, num_inference_steps=r.steps,
                 guidance_scale=r.guidance, guidance_scale_2=r.guidance_2, output_type="latent").frames
    assert (ours - stock.float()).abs().max().item() > 1e-3


def test_prompt_embeddings_are_trimmed_then_zero_padded_to_512(tiny_root, tmp_path):
    engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path, hardware=CPU)
    job = clip(engine, Request(model="tiny-wan2.1-t2v", prompt="a cat", frames=9, width=64, height=64),
               tmp_path / "x.mp4")
    host = load(engine, job)
    comps = host.components
    cond, _ = host.encode("a cat", "x")
    n = int(comps.tokenizer(["a cat"], return_tensors="pt").attention_mask.sum())
    assert cond.shape[1] == 512
    assert cond[0, :n].abs().sum() > 0 and cond[0, n:].abs().sum() == 0


# ---- A14B, cancel, OOM, reproducibility -----------------------------------------------------
@pytest.mark.parametrize("steps,switch", [(10, 7), (40, 26)])
def test_a14b_switches_expert_at_official_step(tiny_root, tmp_path, steps, switch):
    engine = Engine([tiny_root["comfyui-a14b-fp8-scaled"].path], tmp_path, hardware=CPU)
    evs = run_events(engine, Request(model="tiny-wan2.2-t2v-a14b", prompt="rain", frames=5, width=64,
                                     height=64, steps=steps, seed=3))
    sw = only(evs, events.ExpertSwitch)
    assert [(s.step, s.from_expert, s.to_expert) for s in sw] == [(switch, "high", "low")]
    experts = [p.expert for p in only(evs, events.Preview)]
    assert experts == ["high"] * switch + ["low"] * (steps - switch)
    finished(evs)


def test_a_preview_and_progress_arrive_every_step(tiny_root, tmp_path):
    engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path, hardware=CPU)
    evs = run_events(engine, Request(model="tiny-wan2.1-t2v", prompt="x", frames=9, width=64, height=64,
                                     steps=5, seed=1))
    previews = only(evs, events.Preview)
    assert [p.step for p in previews] == [1, 2, 3, 4, 5]
    assert previews[0].frames.dtype == np.uint8 and previews[0].frames.shape[0] == 3  # 3 latent frames
    eta = [p.eta_s for p in only(evs, events.Progress) if p.phase == "sample"]
    assert len(eta) == 5 and eta[-1] == 0
    assert isinstance(evs[0], events.PlanReady)


def test_same_seed_same_video_other_seed_other_video(tiny_root, tmp_path):
    engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path, hardware=CPU)
    paths = []
    for seed in (5, 5, 6):
        ev = finished(run_events(engine, Request(model="tiny-wan2.1-t2v", prompt="x", frames=9, width=64,
                                                 height=64, steps=3, seed=seed)))
        paths.append(ev.path)
    a, b, c = (read_video(p) for p in paths)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_stop_ends_the_run_between_steps_without_decoding(tiny_root, tmp_path):
    engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path / "out", hardware=CPU)
    cancel = threading.Event()
    seen = []

    def press_stop(step, expert):
        seen.append(step)
        if step == 2:
            cancel.set()
    engine.step_hooks.append(press_stop)
    evs = run_events(engine, Request(model="tiny-wan2.1-t2v", prompt="x", frames=9, width=64, height=64,
                                     steps=8, seed=1), cancel=cancel)
    assert only(evs, events.Cancelled) and not only(evs, events.Finished)
    assert seen == [0, 1, 2]
    assert not any(p.phase == "decode" for p in only(evs, events.Progress))
    assert not list((tmp_path / "out").rglob("*.mp4"))


def test_out_of_memory_at_step_k_replans_and_finishes(tiny_root, tmp_path):
    engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path, hardware=CPU)
    fired = []

    def oom_once(step, expert):
        if step == 2 and not fired:
            fired.append(step)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    engine.step_hooks.append(oom_once)
    evs = run_events(engine, Request(model="tiny-wan2.1-t2v", prompt="x", frames=9, width=64, height=64,
                                     steps=4, seed=1))
    notices = [n.message for n in only(evs, events.Notice)]
    assert any("out of GPU memory" in n.lower() or "ran out of gpu memory" in n.lower() for n in notices)
    plans = only(evs, events.PlanReady)
    assert len(plans) == 2 and plans[1].plan != plans[0].plan
    assert probe(finished(evs).path).frames == 9


def test_out_of_memory_twice_is_a_clear_failure(tiny_root, tmp_path):
    engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path, hardware=CPU)

    def always_oom(step, expert):
        raise torch.OutOfMemoryError("CUDA out of memory.")
    engine.step_hooks.append(always_oom)
    evs = run_events(engine, Request(model="tiny-wan2.1-t2v", prompt="x", frames=9, width=64, height=64,
                                     steps=2, seed=1))
    failed = only(evs, events.Failed)
    assert failed and "memory" in failed[0].message.lower() and failed[0].hint
    assert not list(tmp_path.rglob("*.mp4"))


# ---- bad input, before any heavy work -------------------------------------------------------
def _no_load(engine):
    def boom(*a, **k):
        raise AssertionError("models were loaded for a request that should have been refused")
    engine.host.load = boom


@pytest.mark.parametrize("kwargs,field", [
    (dict(frames=10), "frames"), (dict(width=70), "size"), (dict(model="tiny-wan2.2-ti2v-5b", width=48), "size"),
])
def test_bad_request_fails_with_the_field_named_and_nothing_loaded(tiny_root, tmp_path, kwargs, field):
    root = tiny_root["comfyui-ti2v"].path if kwargs.get("model") == "tiny-wan2.2-ti2v-5b" else tiny_root["diffusers-t2v"].path
    engine = Engine([root], tmp_path, hardware=CPU)
    _no_load(engine)
    base = dict(model="tiny-wan2.1-t2v", prompt="x", frames=9, width=64, height=64, steps=2)
    base.update(kwargs)
    evs = run_events(engine, Request(**base))
    f = only(evs, events.Failed)
    assert f and f[0].message.startswith(field) and f[0].hint
    assert not list(tmp_path.rglob("*.mp4"))


def test_unwritable_output_folder_is_refused_before_loading(tiny_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    engine = Engine([tiny_root["diffusers-t2v"].path], blocker / "outputs", hardware=CPU)
    _no_load(engine)
    evs = run_events(engine, Request(model="tiny-wan2.1-t2v", prompt="x", frames=9, width=64, height=64))
    f = only(evs, events.Failed)
    assert f and "outputs_dir" in f[0].message


def test_missing_model_files_say_what_to_put_where(tmp_path):
    engine = Engine([tmp_path / "empty"], tmp_path / "out", hardware=CPU)
    evs = run_events(engine, Request(model="wan2.1-t2v-1.3b", prompt="x"))
    f = only(evs, events.Failed)
    assert f and "diffusion_models" in (f[0].message + f[0].hint)


def test_batched_cfg_gives_the_same_latents_with_half_the_block_copies(tiny_root, tmp_path):
    """plan.cfg_batched runs cond+uncond as one batch of 2: the same result (within float rounding
    of a batch-2 matmul), and each swapped block is loaded once per step instead of twice."""
    from dataclasses import replace
    results, copies = {}, {}
    for batched in (False, True):
        engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path, hardware=CPU)
        job = clip(engine, Request(model="tiny-wan2.1-t2v", prompt="a kite", frames=9, width=64,
                                   height=64, steps=4, seed=2), tmp_path / "x.mp4")
        job.plan = replace(job.plan, blocks_swapped=2, cfg_batched=batched)
        host = load(engine, job)
        cond, uncond = host.encode(job.request.prompt, job.request.negative_prompt)
        before = host.placement.block_transfers()
        results[batched] = denoise(engine, job, sampler.initial_noise(job.spec, job.request), cond, uncond)
        copies[batched] = host.placement.block_transfers() - before
    assert (results[True] - results[False]).abs().max().item() <= 1e-5
    assert copies == {False: 4 * 2 * 2, True: 4 * 2}     # steps × swapped blocks × forwards per step


def test_ti2v_image_conditioning_equals_diffusers_i2v_pipeline(tiny_root, tmp_path):
    """sampler.CleanFirstLatents — how Extend conditions TI2V on its overlap — against diffusers'
    WanImageToVideoPipeline with expand_timesteps (Wan2.2 TI2V's image-to-video), same image, noise,
    embeddings and official σ: the same final latents."""
    from PIL import Image
    from diffusers import WanImageToVideoPipeline
    engine = Engine([tiny_root["diffusers-ti2v"].path], tmp_path, hardware=CPU)
    job = clip(engine, Request(model="tiny-wan2.2-ti2v-5b", prompt="a boat", frames=9, width=64,
                               height=64, steps=6, seed=4), tmp_path / "x.mp4")
    host = load(engine, job)
    comps = host.components
    cond, uncond = host.encode(job.request.prompt, job.request.negative_prompt)
    noise = sampler.initial_noise(job.spec, job.request)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    condition = host.codec.encode(image[None])
    assert condition.shape[2] == 1
    ours = denoise(engine, job, noise.clone(), cond, uncond, sampler.CleanFirstLatents(condition))

    r = job.request
    sched = OfficialSigmaUniPC(num_train_timesteps=1000, prediction_type="flow_prediction",
                               use_flow_sigmas=True, flow_shift=r.shift, solver_order=2, solver_type="bh2",
                               predict_x0=True, lower_order_final=True, final_sigmas_type="zero")
    pipe = WanImageToVideoPipeline(tokenizer=comps.tokenizer, text_encoder=comps.text_encoder, vae=comps.vae,
                                   scheduler=sched, transformer=comps.transformer, image_processor=None,
                                   image_encoder=None, expand_timesteps=True)
    theirs = pipe(image=Image.fromarray(image), prompt_embeds=cond, negative_prompt_embeds=uncond,
                  latents=noise.clone(), height=64, width=64, num_frames=9, num_inference_steps=r.steps,
                  guidance_scale=r.guidance, output_type="latent").frames
    diff = (ours - theirs.float()).abs().max().item()
    print(f"max abs diff TI2V conditioning vs WanImageToVideoPipeline: {diff:.3e}")
    assert diff <= 1e-4, diff
    assert torch.equal(ours[:, :, :1], condition)          # the image frame is held exactly
    # not vacuous: without the condition the same noise gives a different clip
    free = denoise(engine, job, noise.clone(), cond, uncond)
    assert (free - ours).abs().max().item() > 1e-2


def test_eta_counts_the_decode_once_it_has_been_measured(tiny_root, tmp_path):
    """The first run cannot know how long decoding takes; the next one at the same size adds it."""
    engine = Engine([tiny_root["diffusers-t2v"].path], tmp_path, hardware=CPU)
    req = Request(model="tiny-wan2.1-t2v", prompt="x", frames=9, width=64, height=64, steps=3, seed=1)
    last_eta = []
    for _ in range(2):
        evs = run_events(engine, req)
        finished(evs)
        last_eta.append([p.eta_s for p in only(evs, events.Progress) if p.phase == "sample"][-1])
    assert last_eta[0] == 0 and last_eta[1] > 0
