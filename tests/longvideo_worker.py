"""Runs one long-video job in its own process, for tests and the benchmark that need a real process:
a SIGKILL in the middle of a job, or the peak RSS of a fresh interpreter.

    python tests/longvideo_worker.py --models-dir D --model M --out OUT.mp4 --frames N --window W [--resume]

Prints one JSON line per finished window ({"window", "frames", "seconds", "rss_mb"}) and a last line
{"done": <event class>, "maxrss_mb": peak RSS of this process, "seconds": ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument("--overlap", type=int, default=None)
    ap.add_argument("--size", default="64x64")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--prompt", default="a red ball rolls\na blue cube spins")
    ap.add_argument("--video", type=Path, default=None, help="extend this video")
    ap.add_argument("--resume", action="store_true", help="continue --out from its journal")
    ap.add_argument("--step-sleep", type=float, default=0.0,
                    help="seconds to wait before each step, so a test can kill the job mid-window")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed: same math every run)")
    ap.add_argument("--real-hardware", action="store_true",
                    help="plan for this machine (GPU if any) instead of a simulated 24 GB CPU machine")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from wan_app import events
    from wan_app.engine import Engine
    from wan_app.hardware import Hardware
    from wan_app.longvideo import LongRequest
    from wan_app.request import Request, parse_size

    hardware = None if args.real_hardware else Hardware.simulated(vram_gb=None, ram_gb=24.0)
    engine = Engine([args.models_dir], args.out.parent, hardware=hardware)
    if args.step_sleep:
        engine.step_hooks.append(lambda i, expert: time.sleep(args.step_sleep))
    if args.resume:
        stream = engine.resume(args.out)
    else:
        w, h = parse_size(args.size)
        req = Request(model=args.model, prompt=args.prompt, width=w, height=h, steps=args.steps, seed=args.seed)
        stream = engine.run(LongRequest(base=req, total_frames=args.frames, window=args.window,
                                        overlap=args.overlap, input_video=args.video), out_path=args.out)
    import threading

    import psutil
    proc = psutil.Process()
    peak = {"mb": 0.0}
    stop = threading.Event()

    def sample():   # the peak RSS of each window, sampled every 5 ms
        while not stop.wait(0.005):
            peak["mb"] = max(peak["mb"], proc.memory_info().rss / 2**20)
    threading.Thread(target=sample, daemon=True).start()
    t0 = last = time.perf_counter()
    final = None
    for ev in stream:
        if isinstance(ev, events.WindowDone):
            now = time.perf_counter()
            print(json.dumps({"window": ev.window, "windows": ev.windows, "frames": ev.frames_total,
                              "seconds": round(now - last, 3), "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                              "peak_mb": round(peak["mb"], 1)}),
                  flush=True)
            last = now
            peak["mb"] = 0.0
        elif isinstance(ev, (events.Finished, events.Failed, events.Cancelled)):
            final = ev
    stop.set()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
    print(json.dumps({"done": type(final).__name__, "message": getattr(final, "message", ""),
                      "maxrss_mb": round(peak_kb / 1024, 1), "seconds": round(time.perf_counter() - t0, 3)}),
          flush=True)
    return 0 if isinstance(final, events.Finished) else 1


if __name__ == "__main__":
    sys.exit(main())
