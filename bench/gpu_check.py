"""One GPU check (issue 11): everything issue 11 wants measured on a GPU, in one short run, one table.

    bash bench/gpu_check.sh                      # on a machine with an NVIDIA GPU (installs, then runs this)
    .venv/bin/python bench/gpu_check.py          # the same, with the venv already there
    .venv/bin/python bench/gpu_check.py --cpu-smoke   # every code path on tiny models on the CPU (a test runs it)

Without a CUDA GPU it prints that it needs one and exits 0. It never downloads anything: the DiTs are
full-size WanTransformer3DModels with random weights made on the GPU (no files; loading is measured by
bench/load_bench.py), the prompt embeddings are random, and nothing but the DiT runs (no umT5, no VAE).

What it measures, through wan_app's real modules (planner.plan, memory.apply_plan with blockswap and
the attention fallback, sampler.sample, stepcache, fp8_matmul):
- 1.3B at 832x480x81: the planner's plan; sdpa / flash / sage; torch.compile of the blocks on vs off
  (warm-up and recompiles); the planner's plan for an 8 and a 6 GB card, run capped to that;
- MagCache: 1.3B at 832x480x17, 50 steps (its table's length), skipped forwards and time vs off;
- 14B at 832x480x81: bf16 vs fp8 upcast vs fp8 matmul, resident; planned for 24 / 16 / 12 GB cards;
- A14B at 832x480x81: planned for 24 / 16 / 12 GB, one step on each expert (boundary 0.95 so that the
  second of two steps is the low-noise one; the row shows that step, the note the switch); its
  "vs resident" is against the 14B fp8 resident step (the same DiT).
A capped run plans with Hardware.simulated(vram_gb=cap) (this GPU's compute capability and attention
kernels) and runs under torch.cuda.set_per_process_memory_fraction(cap − CUDA context), so one big GPU
shows what each consumer card would get.

Per-step time is the second of two steps (the first warms kernels up), with CUDA synchronised at each
step; 14B / A14B rows run CFG 1 (one forward per step) to fit the time, 1.3B rows CFG 5 (two). Peak GB is
torch's peak reserved memory plus the CUDA context (measured at start), beside the planner's estimate
for the sampling phase (and the plan's overall peak, which may be another phase). A time budget
(--budget-s) skips what is left rather than run over; every row says what it did or why not.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

GB = 1e9
W, H = 832, 480


@dataclass
class Row:
    section: str
    what: str
    plan: str = ""
    step_s: float | None = None
    peak_gb: float | None = None
    est_sample_gb: float | None = None
    est_plan_gb: float | None = None
    note: str = ""


@dataclass
class Ctx:
    device: torch.device
    hw: object
    smoke: bool
    budget_s: float
    t0: float = field(default_factory=time.perf_counter)
    context_gb: float = 0.0
    rows: list = field(default_factory=list)
    baseline: dict = field(default_factory=dict)      # section -> resident s/step, for the capped rows

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"  {row.section:6s} {row.what:34s} {_f(row.step_s, 's')} {_f(row.peak_gb, 'GB')} {row.note}", flush=True)
        return row


def _f(x, unit: str) -> str:
    return f"{x:8.2f} {unit}" if isinstance(x, (int, float)) else " " * (9 + len(unit))


# ---- models -------------------------------------------------------------------------------------------
def spec_for(name: str, smoke: bool):
    from wan_app import catalog
    ids = {"1.3b": ("wan2.1-t2v-1.3b", "tiny-wan2.1-t2v"), "14b": ("wan2.1-t2v-14b", "tiny-wan2.1-t2v"),
           "a14b": ("wan2.2-t2v-a14b", "tiny-wan2.2-t2v-a14b")}[name]
    return catalog.get(ids[1] if smoke else ids[0])


def random_transformer(spec, device: torch.device, seed: int, dtype=torch.bfloat16):
    """A full-size WanTransformer3DModel with random weights made where it will run (on a GPU: ~ms a
    tensor, no host RAM); `_keep_in_fp32_modules` in fp32, as wan_app.memory keeps them."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel
    a = spec.arch
    cfg = dict(patch_size=[1, 2, 2], num_attention_heads=a.num_heads, attention_head_dim=a.head_dim,
               in_channels=a.in_channels, out_channels=a.out_channels, text_dim=spec.text_dim,
               freq_dim=32 if spec.tiny else 256, ffn_dim=a.ffn_dim, num_layers=a.num_layers,
               cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    with init_empty_weights():
        model = WanTransformer3DModel.from_config(cfg)
    keep = list(WanTransformer3DModel._keep_in_fp32_modules)
    g = torch.Generator(device=device).manual_seed(seed)
    for mod_name, mod in model.named_modules():
        for p_name, p in list(mod.named_parameters(recurse=False)):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            dt = torch.float32 if any(k in full for k in keep) else dtype
            if "norm" in full and p.ndim == 1 and p_name == "weight":
                v = torch.ones(p.shape, device=device, dtype=dt)
            elif p.ndim >= 2 and "scale_shift_table" not in full:
                v = torch.randn(p.shape, device=device, dtype=dt, generator=g).mul_(p[0].numel() ** -0.5)
            else:
                v = torch.randn(p.shape, device=device, dtype=dt, generator=g).mul_(0.02)
            mod._parameters[p_name] = torch.nn.Parameter(v, requires_grad=False)
    return model.eval().requires_grad_(False)


def _free(ctx: Ctx) -> None:
    gc.collect()
    if ctx.cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ---- one run --------------------------------------------------------------------------------------
def _sample_estimate(hw, spec, plan, w, h, frames, disk) -> float | None:
    """The planner's sampling-phase estimate for this plan (its private arithmetic: the plan's own
    est_vram_gb is the largest phase, which with umT5 on the GPU is the encode phase)."""
    try:
        from wan_app import planner as P
        c = P._Choice(plan.weight_dtype, plan.blocks_swapped, plan.text_encoder_device != "cpu",
                      plan.text_encoder_dtype, plan.text_encoder_kept, plan.experts_resident,
                      plan.attention_backend, plan.vae_tiling, plan.cfg_batched)
        return P._estimate(P._machine(hw), spec, w, h, frames, c, disk).dev.get("sample")
    except Exception:  # noqa: BLE001 - a planner refactor must not stop the measurements
        return None


def _plan_words(plan) -> str:
    swap = f"swap {plan.blocks_swapped}/{plan.blocks_total}" if plan.blocks_swapped else "resident"
    extra = " batched-cfg" if plan.cfg_batched else ""
    extra += " one-expert" if plan.experts_resident == "one" else ""
    return f"{plan.weight_dtype} {swap} {plan.attention_backend}{extra}"


def run_sampler(ctx: Ctx, spec, models: dict, plan, frames: int, steps: int, guidance: float,
                boundary: float | None = None, cache: str | None = None, prep=None, cap_gb: float | None = None,
                w: int = W, h: int = H, hooks=()) -> dict:
    """sampler.sample over `steps` on `models` ({"only"} or {"high", "low"}) placed by `plan`."""
    from wan_app import events, memory, sampler, stepcache
    from wan_app.checkpoints.load import Components
    from wan_app.request import Request, resolve
    notes: list[str] = []
    out: dict = {"notes": notes}
    two = "high" in models
    comps = Components(spec=spec, transformer=models["high" if two else "only"], transformer_2=models.get("low"),
                       vae=None, text_encoder=None, tokenizer=None)
    if ctx.cuda:
        _free(ctx)
        frac = 1.0
        if cap_gb is not None:
            total = torch.cuda.get_device_properties(ctx.device).total_memory
            frac = max(0.01, min(1.0, (cap_gb - ctx.context_gb) * GB / total))
        torch.cuda.set_per_process_memory_fraction(frac, ctx.device)
    placement = memory.apply_plan(plan, comps, notes.append, load_expert=lambda which: models[which])
    cached = None
    try:
        req, _ = resolve(Request(model=spec.id, prompt="gpu check", width=w, height=h, frames=frames, steps=steps,
                                 seed=0, guidance=guidance, guidance_2=guidance if two else None,
                                 boundary=boundary if two else None))
        dtype = sampler.TORCH_DTYPES[plan.compute_dtype]
        g = torch.Generator().manual_seed(1)
        cond = torch.randn(1, spec.text_len, spec.text_dim, generator=g).to(dtype)
        uncond = torch.randn(1, spec.text_len, spec.text_dim, generator=g).to(dtype) if guidance != 1.0 else None
        marks: list[float] = []

        def mark(i, which):
            if ctx.cuda:
                torch.cuda.synchronize(ctx.device)
            marks.append(time.perf_counter())
        hooks = [mark, *hooks]
        if cache:
            cached = stepcache.for_request(req, spec, cache, batched=plan.cfg_batched)
            for m in models.values():
                cached.attach(m)
            hooks.append(cached.begin_step)
        if prep is not None:
            prep(out)
        seen: list = []
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        start = time.perf_counter()
        res = sampler.sample(req, spec, plan, placement, sampler.initial_noise(spec, req), cond, uncond,
                             seen.append, step_hooks=hooks)
        end = time.perf_counter()
        marks.append(end)
        out["steps"] = [b - a for a, b in zip(marks, marks[1:])]
        out["total_s"] = end - start
        out["forwards"] = res.forwards
        out["switch_s"] = sum(e.seconds for e in seen if isinstance(e, events.ExpertSwitch))
        if cached is not None:
            out["run"], out["skipped"] = cached.forwards_run, cached.forwards_skipped
        if ctx.cuda:
            out["peak_gb"] = torch.cuda.max_memory_reserved(ctx.device) / GB + ctx.context_gb
        out["transfers"] = placement.block_transfers()
        out["attention"] = placement.attention_backend
    finally:
        if cached is not None:
            cached.detach_all()
        placement.release()
        if ctx.cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, ctx.device)
        _free(ctx)
    return out


def measure(ctx: Ctx, section: str, what: str, need_s: float, fn) -> Row | None:
    """Run one measurement unless the budget is spent; an error becomes the row's note."""
    if ctx.left() < need_s:
        return ctx.add(Row(section, what, note=f"skipped: {ctx.left():.0f} s of the budget left, needs ~{need_s:.0f} s"))
    try:
        return ctx.add(fn())
    except Exception as e:  # noqa: BLE001 - one failure must not hide the other rows
        if os.environ.get("GPU_CHECK_TRACEBACK"):
            traceback.print_exc()
        _free(ctx)
        first = (str(e).strip().splitlines() or [""])[0][:150]
        return ctx.add(Row(section, what, note=f"FAILED {type(e).__name__}: {first}"))


def _row(ctx, section, what, spec, plan, res, frames, disk, extra: str = "", step: int = -1) -> Row:
    notes = [n for n in res["notes"] if "attention" in n or "fp8" in n or "pin" in n]
    note = "; ".join(x for x in [extra, *notes] if x)
    return Row(section, what, _plan_words(plan), res["steps"][step] if res["steps"] else None, res.get("peak_gb"),
               _sample_estimate(ctx.hw, spec, plan, W if not spec.tiny else 64, H if not spec.tiny else 64, frames, disk),
               plan.est_vram_gb or None, note)


def capped_hw(ctx: Ctx, cap: float):
    from wan_app.hardware import Hardware
    g = ctx.hw.gpus[0]
    return Hardware.simulated(vram_gb=cap, ram_gb=ctx.hw.ram_total_gb, gpu_name=f"{g.name} capped to {cap:g} GB",
                              cc=g.compute_capability, attention=tuple(ctx.hw.attention),
                              attention_failures=dict(ctx.hw.attention_failures), cpu_count=ctx.hw.cpu_count)


# ---- sections -------------------------------------------------------------------------------------
def _sizes(ctx: Ctx, frames: int) -> tuple[int, int, int]:
    return (64, 64, 9) if ctx.smoke else (W, H, frames)


def section_13b(ctx: Ctx) -> None:
    from wan_app import planner
    from wan_app.plan_types import DiskWeights, Overrides
    spec = spec_for("1.3b", ctx.smoke)
    w, h, f = _sizes(ctx, 81)
    disk = DiskWeights(dit="bf16")
    model = random_transformer(spec, ctx.device, seed=1, dtype=torch.float32 if ctx.smoke else torch.bfloat16)
    models = {"only": model}

    def plain(plan, what, extra="", **kw):
        res = run_sampler(ctx, spec, models, plan, f, 2, 5.0, w=w, h=h, **kw)
        return _row(ctx, "1.3B", what, spec, plan, res, f, disk, extra)

    base = planner.plan(ctx.hw, spec, w, h, f, disk=disk, cfg_passes=2)
    r = measure(ctx, "1.3B", "planner's plan", 30, lambda: plain(base, "planner's plan"))
    if r is not None and base.blocks_swapped == 0:
        ctx.baseline["1.3B"] = r.step_s
    for att in ("sdpa", "flash", "sage"):
        if att != "sdpa" and att not in ctx.hw.attention:
            ctx.add(Row("1.3B", f"attention {att}", note=f"not available: {ctx.hw.attention_failures.get(att, 'did not run')}"))
            continue
        p = planner.plan(ctx.hw, spec, w, h, f, Overrides(attention=att), disk=disk, cfg_passes=2)
        measure(ctx, "1.3B", f"attention {att}", 30, lambda p=p, att=att: plain(p, f"attention {att}"))
    measure(ctx, "1.3B", "torch.compile of the blocks", 150, lambda: compile_row(ctx, spec, models, base, w, h, f, disk))
    # MagCache: its tables are for 50 steps; fewer frames keep 100 forwards short
    mf = 9 if ctx.smoke else 17
    steps = 12 if ctx.smoke else 50
    mplan = planner.plan(ctx.hw, spec, w, h, mf, disk=disk, cfg_passes=2)

    def magcache_row():
        off = run_sampler(ctx, spec, models, mplan, mf, steps, 5.0, w=w, h=h)
        on = run_sampler(ctx, spec, models, mplan, mf, steps, 5.0, cache="magcache", w=w, h=h)
        speed = off["total_s"] / on["total_s"]
        return Row("cache", f"MagCache {steps} steps, {w}x{h}x{mf}", _plan_words(mplan), on["total_s"] / steps,
                   on.get("peak_gb"), None, None,
                   f"skipped {on['skipped']} of {on['forwards']} forwards; {on['total_s']:.1f} s vs "
                   f"{off['total_s']:.1f} s off ({speed:.2f}x)")
    measure(ctx, "cache", "MagCache vs off", 20 if ctx.smoke else 60, magcache_row)
    # last: a small card's plan may store the model in fp8, in place
    for cap in ((8.0, 6.0) if ctx.cuda else ()):
        p = planner.plan(capped_hw(ctx, cap), spec, w, h, f, disk=disk, cfg_passes=2)
        if p.blocker:
            ctx.add(Row("1.3B", f"{cap:g} GB card", _plan_words(p), note=f"planner: does not fit ({p.blocker['problem'][:90]})"))
            continue
        measure(ctx, "1.3B", f"{cap:g} GB card (capped)", 40,
                lambda p=p, cap=cap: plain(p, f"{cap:g} GB card (capped)", f"cap {cap:g} GB", cap_gb=cap))
    models.clear()
    _free(ctx)


def compile_row(ctx: Ctx, spec, models, plan, w, h, f, disk) -> Row:
    if not ctx.cuda:
        return Row("1.3B", "torch.compile of the blocks", note="off on CPU (the app compiles on CUDA only)")
    import importlib.util
    if importlib.util.find_spec("triton") is None:
        return Row("1.3B", "torch.compile of the blocks", note="skipped: Triton is not installed")
    import torch._dynamo as dynamo
    from wan_app import compile_blocks          # what the app runs with --compile on
    dynamo.reset()
    model = models["only"]
    graphs: list[int] = []          # graphs compiled so far, at the start of each step and at the end

    def count(i, which):
        graphs.append(compile_blocks.graphs_compiled())
    try:
        res = run_sampler(ctx, spec, models, plan, f, 2, 5.0, w=w, h=h, hooks=(count,),
                          prep=lambda out: compile_blocks.compile_blocks(model))
        count(-1, None)
    finally:
        compile_blocks.uncompile_blocks(model)       # back to eager for the next rows
        dynamo.reset()
    warm, steady = res["steps"][0], res["steps"][-1]
    later = graphs[-1] - graphs[1]
    return Row("1.3B", "torch.compile of the blocks", _plan_words(plan), steady, res.get("peak_gb"),
               _sample_estimate(ctx.hw, spec, plan, w, h, f, disk), plan.est_vram_gb or None,
               f"warm-up (step 1, compiling) {warm:.1f} s; {graphs[1] - graphs[0]} graphs compiled in step 1, {later} in "
               f"step 2" + (" (RECOMPILED)" if later else ""))


def section_14b(ctx: Ctx) -> dict:
    from wan_app import fp8_matmul, planner
    from wan_app.fp8 import store_fp8_scaled
    from wan_app.plan_types import DiskWeights, Overrides
    spec = spec_for("14b", ctx.smoke)
    w, h, f = _sizes(ctx, 81)
    dt = torch.float32 if ctx.smoke else torch.bfloat16
    model = random_transformer(spec, ctx.device, seed=2, dtype=dt)
    models = {"only": model}
    bf16 = DiskWeights(dit="bf16")
    fp8 = DiskWeights(dit="fp8")

    def one(plan, what, disk, extra="", **kw):
        res = run_sampler(ctx, spec, models, plan, f, 2, 1.0, w=w, h=h, **kw)
        return _row(ctx, "14B", what, spec, plan, res, f, disk, extra)

    half = "fp32" if ctx.smoke else "bf16"
    p16 = planner.plan(ctx.hw, spec, w, h, f, Overrides(weight_dtype=half, blocks_swapped=0), disk=bf16, cfg_passes=1)
    measure(ctx, "14B", f"{half} resident", 40, lambda: one(p16, f"{half} resident", bf16))
    # fp8 from here on (in place, as the app's fp8 plans store it), quantized where the weights are
    if ctx.cuda:
        model.to(ctx.device)
    store_fp8_scaled(model)
    _free(ctx)
    p8 = planner.plan(ctx.hw, spec, w, h, f, Overrides(weight_dtype="fp8", blocks_swapped=0), disk=fp8, cfg_passes=1)
    r = measure(ctx, "14B", "fp8 upcast, resident", 40, lambda: one(p8, "fp8 upcast, resident", fp8))
    if r is not None:
        ctx.baseline["14B"] = r.step_s        # the capped runs below are fp8 upcast too
    path, why = fp8_matmul.choose_fp8_path(ctx.device)
    if path == "scaled_mm":
        def mm_row():
            try:
                return one(p8, "fp8 matmul, resident", fp8, "torch._scaled_mm",
                           prep=lambda out: fp8_matmul.enable_scaled_mm(model, print, ctx.device))
            finally:
                fp8_matmul.disable_scaled_mm(model)
        measure(ctx, "14B", "fp8 matmul, resident", 40, mm_row)
    else:
        ctx.add(Row("14B", "fp8 matmul, resident", note=f"not run: {why}"))
    for cap in ((24.0, 16.0, 12.0) if ctx.cuda else ()):
        p = planner.plan(capped_hw(ctx, cap), spec, w, h, f, disk=fp8, cfg_passes=1)
        if p.blocker:
            ctx.add(Row("14B", f"{cap:g} GB card", _plan_words(p), note=f"planner: does not fit ({p.blocker['problem'][:90]})"))
            continue
        measure(ctx, "14B", f"{cap:g} GB card (capped)", 45,
                lambda p=p, cap=cap: one(p, f"{cap:g} GB card (capped)", fp8, f"cap {cap:g} GB", cap_gb=cap))
    return {"model": model}


def section_a14b(ctx: Ctx, high) -> None:
    from wan_app import planner
    from wan_app.fp8 import store_fp8_scaled
    from wan_app.plan_types import DiskWeights
    spec = spec_for("a14b", ctx.smoke)
    w, h, f = _sizes(ctx, 81)
    fp8 = DiskWeights(dit="fp8")
    if high is None:
        high = random_transformer(spec, ctx.device, seed=2, dtype=torch.float32 if ctx.smoke else torch.bfloat16)
        store_fp8_scaled(high)
    low = random_transformer(spec, ctx.device, seed=3, dtype=torch.float32 if ctx.smoke else torch.bfloat16)
    store_fp8_scaled(low)
    _free(ctx)
    models = {"high": high, "low": low}
    if "14B" in ctx.baseline:
        ctx.baseline["A14B"] = ctx.baseline["14B"]     # same DiT, fp8 upcast, CFG 1: 14B's resident step
    caps = (24.0, 16.0, 12.0) if ctx.cuda else (None,)
    for cap in caps:
        hw = capped_hw(ctx, cap) if cap else ctx.hw
        p = planner.plan(hw, spec, w, h, f, disk=fp8, cfg_passes=1)
        label = f"{cap:g} GB card (capped)" if cap else "planner's plan"
        if p.blocker:
            ctx.add(Row("A14B", label, _plan_words(p), note=f"planner: does not fit ({p.blocker['problem'][:90]})"))
            continue

        def a14b_row(p=p, cap=cap, label=label):
            res = run_sampler(ctx, spec, models, p, f, 2, 1.0, boundary=0.95, cap_gb=cap, w=w, h=h)
            # the sampler moves experts before a step's hooks run: the switch lands in the first interval
            hi, sw = res["steps"][0], res["switch_s"]
            return _row(ctx, "A14B", label, spec, p, res, f, fp8,
                        f"low-noise step shown; high step {hi - sw:.2f} s (first, warm-up); expert switch {sw:.2f} s")
        measure(ctx, "A14B", label, 60, a14b_row)


# ---- output ---------------------------------------------------------------------------------------
def table(ctx: Ctx, header: str) -> str:
    lines = [header, "",
             "| section | what | plan | s/step | vs resident | peak GB | planner sample GB | measured/planned | "
             "plan peak GB | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def g(x, d=2):
        return f"{x:.{d}f}" if isinstance(x, (int, float)) else ""
    for r in ctx.rows:
        base = ctx.baseline.get(r.section)
        vs = r.step_s / base if "capped" in r.what and base and r.step_s else None
        ratio = r.peak_gb / r.est_sample_gb if r.peak_gb and r.est_sample_gb else None
        lines.append(f"| {r.section} | {r.what} | {r.plan} | {g(r.step_s)} | {g(vs)} | {g(r.peak_gb)} | "
                     f"{g(r.est_sample_gb)} | {g(ratio)} | {g(r.est_plan_gb)} | {r.note} |")
    return "\n".join(lines)


def _header(ctx: Ctx) -> str:
    import diffusers
    g = ctx.hw.gpus[0] if ctx.hw.gpus else None
    gpu = (f"{g.name}, {g.total_gb:.0f} GB, compute capability {g.compute_capability[0]}.{g.compute_capability[1]}"
           if g else "CPU (smoke run on tiny models: no GPU numbers)")
    return (f"gpu_check: {gpu}; torch {torch.__version__}, diffusers {diffusers.__version__}, Python "
            f"{platform.python_version()}; attention kernels that ran: {', '.join(ctx.hw.attention)}; "
            f"CUDA context {ctx.context_gb:.2f} GB; {time.strftime('%Y-%m-%d')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny models on the CPU: checks the code paths only")
    ap.add_argument("--budget-s", type=float, default=360.0,
                    help="time budget for building and measuring (default 360 s, leaving the rest of 8 minutes "
                         "for the install and imports); rows past it are listed as skipped")
    ap.add_argument("--only", default="1.3b,14b,a14b", help="sections to run (comma list of 1.3b, 14b, a14b)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check.md"),
                    help="where the table is written (GPU runs only)")
    args = ap.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check needs an NVIDIA GPU with CUDA (torch.cuda.is_available() is False here): nothing "
              "measured. On a CPU, `python bench/gpu_check.py --cpu-smoke` runs the same code paths on tiny models.")
        return 0
    from wan_app import hardware
    torch.set_grad_enabled(False)
    if args.cpu_smoke:
        ctx = Ctx(torch.device("cpu"), hardware.Hardware.simulated(vram_gb=None, ram_gb=24.0), True, args.budget_s)
    else:
        device = torch.device("cuda:0")
        torch.cuda.init()
        torch.zeros(1, device=device)
        free, total = torch.cuda.mem_get_info(device)
        ctx = Ctx(device, hardware.detect(), False, args.budget_s)
        ctx.context_gb = max(0.0, (total - free - torch.cuda.memory_reserved(device)) / GB)
    header = _header(ctx)
    print(header, flush=True)
    want = {s.strip() for s in args.only.split(",") if s.strip()}
    high = None
    if "1.3b" in want:
        section_13b(ctx)
    if "14b" in want:
        high = section_14b(ctx)["model"]
    if "a14b" in want:
        if ctx.left() > 60:
            section_a14b(ctx, high)
        else:
            ctx.add(Row("A14B", "all", note=f"skipped: {ctx.left():.0f} s of the budget left"))
    text = table(ctx, header)
    print("\n" + text + f"\n\n(measured in {time.perf_counter() - ctx.t0:.0f} s)")
    if not args.cpu_smoke and args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
