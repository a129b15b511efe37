"""Headless command line: a thin consumer of the engine's event stream, like the UI."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

from . import catalog, events
from .errors import UserError
from .plan_types import ATTENTION_BACKENDS, DTYPES, Overrides
from .request import Request, parse_size

DEFAULT_MODELS_DIR = "models"
DEFAULT_OUTPUTS_DIR = "outputs"


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", action="append", metavar="DIR",
                   help="folder with model weights; a ComfyUI 'models' folder works as is; repeatable "
                        f"(default: {DEFAULT_MODELS_DIR})")
    p.add_argument("--outputs-dir", metavar="DIR", default=None,
                   help=f"where videos are written (default: {DEFAULT_OUTPUTS_DIR})")


def add_overrides(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("memory plan overrides (default: decided for this machine)")
    g.add_argument("--blocks-swapped", type=int, metavar="K", help="transformer blocks kept in CPU memory")
    g.add_argument("--weight-dtype", choices=DTYPES, help="transformer weight storage")
    g.add_argument("--text-encoder", choices=("gpu", "cpu"), help="where the umT5 text encoder runs")
    g.add_argument("--attention", choices=[a for a in ATTENTION_BACKENDS if a != "auto"],
                   help="attention kernel")
    g.add_argument("--vae-tiling", choices=("on", "off"), help="decode the video in tiles")
    g.add_argument("--experts-resident", choices=("both", "one"),
                   help="Wan2.2 A14B: keep both experts in RAM, or stream one at a time from disk")
    g.add_argument("--compile", choices=("on", "off"),
                   help="torch.compile the transformer blocks (NVIDIA GPU with Triton; default off)")


def overrides_from(args) -> Overrides:
    return Overrides(
        blocks_swapped=args.blocks_swapped, weight_dtype=args.weight_dtype, text_encoder=args.text_encoder,
        attention=args.attention,
        vae_tiling=None if args.vae_tiling is None else args.vae_tiling == "on",
        experts_resident=args.experts_resident,
        compile=None if args.compile is None else args.compile == "on")


def add_request_args(p: argparse.ArgumentParser, frames_help: str, required: bool = True,
                     prompt_help: str = "what the video shows", prompt_default: str | None = None) -> None:
    p.add_argument("--model", required=required, help="model id: " + ", ".join(catalog.MODELS))
    if prompt_default is None:
        p.add_argument("--prompt", required=required, help=prompt_help)
    else:
        p.add_argument("--prompt", default=prompt_default, help=prompt_help + " (plans do not depend on it)")
    p.add_argument("--negative-prompt", default=None, help="what to avoid (default: the official one)")
    p.add_argument("--size", default=None, metavar="WxH", help="e.g. 832x480 (default: the model's)")
    p.add_argument("--frames", type=int, default=None, help=frames_help)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: official)")
    p.add_argument("--shift", type=float, default=None, help="flow shift (default: official)")
    p.add_argument("--cfg", type=float, default=None, dest="guidance",
                   help="CFG scale (A14B: the high-noise expert's)")
    p.add_argument("--cfg-low", type=float, default=None, dest="guidance_2",
                   help="A14B: the low-noise expert's CFG scale")
    p.add_argument("--boundary", type=float, default=None, help="A14B: expert switch at t >= boundary*1000")
    p.add_argument("--solver", default=None, choices=catalog.SOLVERS,
                   help="sampler (default: unipc; a --preset brings its own)")
    p.add_argument("--seed", type=int, default=-1, help="-1 for random; the seed used is printed")
    p.add_argument("--fps", type=int, default=None, help="frames per second of the mp4 (default: the model's)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:S[:S_LOW]]",
                   help="apply a LoRA (a path, or a file name under a loras/ folder) at strength S (default 1; "
                        "-4..4); Wan2.2 A14B: S for the high-noise expert, S_LOW for the low-noise one; repeatable")
    p.add_argument("--image", default=None, metavar="FILE",
                   help="image to video: the first frame (I2V, FLF2V, TI2V 5B); the size follows its aspect ratio")
    p.add_argument("--last-image", default=None, metavar="FILE", help="first + last frame (FLF2V): the last frame")
    p.add_argument("--cache", default="off", choices=("off", "magcache", "teacache"),
                   help="step cache: skip transformer forwards whose output barely changes (default: off)")
    p.add_argument("--cache-threshold", type=float, default=None, metavar="X",
                   help="the cache's threshold, 0..1 (default: the published one for the model; 0 skips nothing)")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="a few-step distill: 'Lightning 4 steps' or 'LightX2V 4 steps' (sets steps, CFG, shift, "
                        "solver, the A14B split and its LoRA; settings you give win)")


def request_from(args) -> Request:
    from .lora import parse_lora_arg
    w, h = parse_size(args.size) if args.size else (None, None)
    loras = [{"file": c.file, "strength": c.strength, "strength_low": c.strength_low}
             for c in (parse_lora_arg(text) for text in getattr(args, "lora", []) or [])]
    req = Request(model=args.model, prompt=args.prompt, negative_prompt=args.negative_prompt,
                  width=w, height=h, frames=args.frames, steps=args.steps, shift=args.shift,
                  guidance=args.guidance, guidance_2=args.guidance_2, boundary=args.boundary,
                  solver=args.solver, seed=None if args.seed < 0 else args.seed, fps=args.fps, loras=loras,
                  image=getattr(args, "image", None), last_image=getattr(args, "last_image", None),
                  cache=getattr(args, "cache", "off"), cache_threshold=getattr(args, "cache_threshold", None))
    if getattr(args, "preset", None):
        from .lora import presets
        req = presets.apply(presets.get(args.preset, args.model), req, [Path(d) for d in models_dirs(args)])
    return req if req.solver else replace(req, solver="unipc")


def models_dirs(args) -> list[str]:
    return args.models_dir or [DEFAULT_MODELS_DIR]


# ---- commands -------------------------------------------------------------------------------
def cmd_models(args) -> int:
    from .checkpoints import scan
    inv = scan([Path(d) for d in models_dirs(args)])
    if args.ids:
        for mid in inv.runnable_ids():
            print(mid)
        return 0
    for st in inv.status():
        if st.spec.tiny and not st.runnable and not args.all:
            continue
        mark = "ready  " if st.runnable else "missing"
        print(f"[{mark}] {st.spec.id:24s} {st.spec.name}")
        for comp, path in st.found.items():
            print(f"           {comp}: {path}")
        for m in st.missing:
            print(f"           needs: {m}")
    for sentence in inv.folder_problems:
        print(f"[folder ] {sentence}")
    for f in inv.unsupported():
        print(f"[found  ] {f.path}: {f.problem or 'a Wan model this app does not run yet'}")
    for f in inv.files:
        if f.problem and not f.unsupported:
            print("[skipped] " + (f.problem if f.problem.startswith(str(f.path)) else f"{f.path}: {f.problem}"))
    from .lora import find_loras, group_items
    loras = find_loras([Path(d) for d in models_dirs(args)])
    for item in group_items([f for f in loras if f.problem is None]):
        first = item.files[0]
        pair = " (high + low pair)" if item.is_pair else ""
        print(f"[lora   ] {item.name}{pair}: for {first.base}, rank {first.rank}")
    for f in loras:
        if f.problem:
            print(f"[skipped] {f.path}: {f.problem}")
    return 0


def cmd_download(args) -> int:
    from .checkpoints import download_missing
    spec = catalog.get(args.model)
    target = Path(models_dirs(args)[0])

    def progress(name, i, total):
        print(f"[{i + 1}/{total}] {name} -> {target}", file=sys.stderr)
    written = download_missing(spec, target, progress)
    print(f"{spec.name}: " + (f"downloaded {len(written)} file(s)" if written else "nothing missing"))
    return 0


def cmd_plan(args) -> int:
    """The plan `generate` with the same arguments would run, from the files it would load."""
    import json
    from .hardware import Hardware, detect
    from .planner import explain
    if args.vram is not None or args.ram is not None:
        hw = Hardware.simulated(vram_gb=args.vram or None, ram_gb=args.ram if args.ram is not None else 32.0)
    else:
        hw = detect()
    engine = make_engine(args, hardware=hw)
    job = job_from(args, request_from(args))
    p = engine.plan(job, files_required=False)
    if args.json:
        print(json.dumps(p.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(explain(hw, p))
    if p.blocker:
        # The last line is what stops the run, so a script (or a person) sees it first.
        print(f"error: {p.blocker['field']}: {p.blocker['problem']}\n  fix: {p.blocker['fix']}", file=sys.stderr)
        return 2
    return 0


def job_from(args, req: Request):
    """What `generate` makes of the arguments: a clip, or windows when more frames than the model's
    training length are asked (unless --no-windows)."""
    spec = catalog.get(req.model)
    if req.frames and req.frames > spec.frames and not getattr(args, "no_windows", False):
        from .longvideo import LongRequest
        return LongRequest(base=req, total_frames=req.frames, window=getattr(args, "window", None),
                           overlap=getattr(args, "overlap", None))
    return req


def install_sigint(cancel: threading.Event) -> None:
    """Ctrl+C stops after the current step (a second Ctrl+C aborts at once)."""
    def handler(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        print("\nStopping after this step… (Ctrl+C again to abort)", file=sys.stderr)
        cancel.set()
    signal.signal(signal.SIGINT, handler)


def consume(stream, quiet: bool = False) -> int:
    """Print an engine event stream with a progress bar. Returns the exit code."""
    from tqdm import tqdm
    bar = None
    code = 1
    for ev in stream:
        if isinstance(ev, events.PlanReady):
            if not quiet:
                print("Plan:\n  " + "\n  ".join(ev.reasons))
        elif isinstance(ev, events.Notice):
            print(f"note: {ev.message}", file=sys.stderr)
        elif isinstance(ev, events.Progress):
            if ev.phase == "sample":
                if bar is None or bar.total != ev.total or ev.step == 1:
                    if bar:
                        bar.close()
                    desc = "sampling" if ev.window is None else f"window {ev.window + 1}/{ev.windows}"
                    bar = tqdm(total=ev.total, desc=desc, unit="step", disable=quiet)
                bar.n = ev.step
                bar.refresh()
            elif not quiet:
                if bar:
                    bar.close()
                    bar = None
                print(f"{ev.phase}: {ev.message}", file=sys.stderr)
        elif isinstance(ev, events.ExpertSwitch):
            if not quiet:
                tqdm.write(f"expert switch at step {ev.step}: {ev.from_expert} → {ev.to_expert} "
                           f"({ev.seconds:.2f}s)")
        elif isinstance(ev, events.WindowDone):
            if not quiet:
                tqdm.write(f"window {ev.window + 1}/{ev.windows} done: {ev.frames_total} frames in {ev.path}")
        elif isinstance(ev, events.Finished):
            if bar:
                bar.close()
            seed = ev.metadata.get("request", {}).get("seed")
            print(f"wrote {ev.path} (seed {seed}, {ev.seconds:.1f}s)")
            code = 0
        elif isinstance(ev, events.Cancelled):
            print(ev.message + (f" Finished part: {ev.path}" if ev.path else ""), file=sys.stderr)
            code = 130
        elif isinstance(ev, events.Failed):
            print(f"error: {ev.message}" + (f"\n  fix: {ev.hint}" if ev.hint else ""), file=sys.stderr)
            code = 2
    if bar:
        bar.close()
    return code


def make_engine(args, hardware=None):
    from .engine import Engine
    from .planner import validate_overrides
    ov = overrides_from(args)
    model = getattr(args, "model", None)
    if model:
        engine = Engine(models_dirs(args), getattr(args, "outputs_dir", None) or DEFAULT_OUTPUTS_DIR,
                        hardware=hardware, overrides=ov)
        validate_overrides(engine.hardware, catalog.get(model), ov)   # refused when set, not mid-run
        return engine
    return Engine(models_dirs(args), getattr(args, "outputs_dir", None) or DEFAULT_OUTPUTS_DIR,
                  hardware=hardware, overrides=ov)


def cmd_generate(args) -> int:
    engine = make_engine(args)
    cancel = threading.Event()
    install_sigint(cancel)
    job = job_from(args, request_from(args))
    return consume(engine.run(job, cancel=cancel, out_path=Path(args.out) if args.out else None), args.quiet)


def build_parser(extra_commands=None, top_level=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="app.py",
        description="Wan video studio: text-to-video with Wan2.1 / Wan2.2 that plans GPU memory by itself. "
                    "Without a command it starts the web app.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the models found and what each still lacks")
    add_common(p)
    p.add_argument("--ids", action="store_true", help="print only the ids of runnable models, one per line")
    p.add_argument("--all", action="store_true", help="also list the tiny test models when absent")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("download", help="download a model's missing files from the Hugging Face Hub "
                                        "(huggingface_hub, with progress) into the models folder")
    p.add_argument("--model", required=True, help="model id: " + ", ".join(
        m for m, s in catalog.MODELS.items() if not s.tiny))
    add_common(p)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("plan", help="print the memory plan `generate` would run, and its reasons, for this or "
                                    "a described machine")
    add_request_args(p, "frames (default: the model's training length); more is planned window by window",
                     prompt_default="plan")
    add_common(p)
    p.add_argument("--window", type=int, default=None, help="long videos: frames per window")
    p.add_argument("--overlap", type=int, default=None, help="long videos: frames shared by windows (4m+1)")
    p.add_argument("--no-windows", action="store_true", help="never split into windows")
    p.add_argument("--vram", type=float, default=None, help="describe a machine: GPU memory in GB (0 = no GPU)")
    p.add_argument("--ram", type=float, default=None, help="describe a machine: RAM in GB")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (the keys of `plan` in a "
                                                       "video's sidecar JSON)")
    add_overrides(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("generate", help="make a video from a prompt, headless, with a progress bar")
    add_request_args(p, "frames, 4n+1 (default: the model's 81 / 121); more than that is made window "
                        "by window like Extend")
    add_common(p)
    p.add_argument("--out", default=None, help="output .mp4 path (default: a new file in the outputs folder)")
    p.add_argument("--window", type=int, default=None, help="long videos: frames per window")
    p.add_argument("--overlap", type=int, default=None, help="long videos: frames shared by windows (4m+1)")
    p.add_argument("--no-windows", action="store_true", help="never split into windows")
    p.add_argument("--quiet", action="store_true", help="only print the result")
    add_overrides(p)
    p.set_defaults(func=cmd_generate)

    for add in extra_commands or []:
        add(sub)
    if top_level:
        top_level(parser)
    return parser


def main(argv=None, extra_commands=None, default=None, top_level=None) -> int:
    """`default` runs when no command is given (app.py: the web app, whose options `top_level` adds)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parser = build_parser(extra_commands, top_level)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None) or default
    if func is None:
        parser.print_help()
        return 0
    try:
        return func(args)
    except UserError as e:
        print(f"error: {e.field}: {e.problem}" + (f"\n  fix: {e.fix}" if e.fix else ""), file=sys.stderr)
        return 2
