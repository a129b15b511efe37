"""Long video: peak RAM and time per window for 1, 4 and 16 windows, each in a fresh process.

    python bench/long_bench.py                                  # tiny model on CPU (builds it in a temp dir)
    python bench/long_bench.py --model wan2.1-t2v-1.3b --models-dir models --size 832x480 --steps 20

What it shows: RAM stays flat however many windows (only one window of frames is ever held), and
the time per window is constant (nothing is re-read or re-encoded as the video grows). Each job runs
in tests/longvideo_worker.py so its peak RSS (ru_maxrss) belongs to that job alone. Writes a markdown
table to stdout and bench/results/long_bench.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "longvideo_worker.py"
# Fixed glibc thresholds so a peak measures what the job holds, not where the heap top was left.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def run_job(args, models_dir: Path, windows: int, out: Path) -> dict:
    total = args.window + (args.window - args.overlap) * (windows - 1)
    cmd = [sys.executable, str(WORKER), "--models-dir", str(models_dir), "--model", args.model, "--out", str(out),
           "--frames", str(total), "--window", str(args.window), "--overlap", str(args.overlap),
           "--size", args.size, "--steps", str(args.steps), "--threads", str(args.threads)]
    if not args.model.startswith("tiny-"):
        cmd.append("--real-hardware")
    env = {**os.environ, **MALLOC_ENV, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines or lines[-1].get("done") != "Finished":
        raise SystemExit(f"job with {windows} windows failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    per = [ln for ln in lines if "window" in ln]
    later = [ln["seconds"] for ln in per[1:]]
    return {"windows": windows, "frames": per[-1]["frames"], "total_s": lines[-1]["seconds"],
            "first_s": per[0]["seconds"], "later_s": sum(later) / len(later) if later else None,
            "peak_mb": lines[-1]["maxrss_mb"], "window_peaks": [ln["peak_mb"] for ln in per]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-wan2.1-t2v")
    ap.add_argument("--models-dir", type=Path, default=None, help="default for tiny models: built in a temp dir")
    ap.add_argument("--size", default="128x128")
    ap.add_argument("--window", type=int, default=25)
    ap.add_argument("--overlap", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "long_bench.txt")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models_dir = args.models_dir
        if models_dir is None:
            if not args.model.startswith("tiny-"):
                raise SystemExit("--models-dir is needed for real models")
            sys.path.insert(0, str(ROOT))
            from wan_app import tiny
            layouts = tiny.build_all(tmp / "models")
            models_dir = next(i.path for n, i in layouts.items() if n.startswith("diffusers")
                              and i.model_id == args.model)
        rows = [run_job(args, models_dir, n, tmp / f"out{n}" / "v.mp4") for n in args.windows]

    w, h = (int(v) for v in args.size.split("x"))
    window_mb = args.window * w * h * 3 / 2**20
    lines = [f"# long_bench {datetime.now():%Y-%m-%d %H:%M} on {platform.node()} ({platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs)",
             f"model {args.model}, {args.size}, window {args.window}, overlap {args.overlap}, {args.steps} steps, "
             f"{args.threads} torch threads; one window of frames = {window_mb:.2f} MB",
             "",
             "| windows | frames | total s | first window s | later windows s (mean) | peak RSS MB | peak per window MB |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        later = f"{r['later_s']:.2f}" if r["later_s"] is not None else "–"
        peaks = " ".join(f"{p:.0f}" for p in r["window_peaks"])
        lines.append(f"| {r['windows']} | {r['frames']} | {r['total_s']:.1f} | {r['first_s']:.2f} | {later} | "
                     f"{r['peak_mb']:.1f} | {peaks} |")
    spread = max(r["peak_mb"] for r in rows) - min(r["peak_mb"] for r in rows)
    lines += ["", f"peak RSS spread across {', '.join(str(n) for n in args.windows)} windows: {spread:.1f} MB "
              f"(one window of frames: {window_mb:.2f} MB)"]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
