"""Load a full-size Wan2.1 T2V 1.3B ComfyUI checkpoint with our loader and with diffusers' from_single_file.

Writes a random-weight checkpoint with the real shapes (dim 1536, ffn 8960, 30 layers, text_dim 4096,
freq_dim 256; keys prefixed `model.diffusion_model.`, F16, patch_embedding F32, ~2.8 GB) under /tmp, loads
it in a fresh subprocess per run, touches every weight (so lazily mapped pages count), and records wall
time and peak RSS (ru_maxrss). Prints a table, writes bench/results/load_bench.txt, deletes the checkpoint.

    .venv/bin/python bench/load_bench.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(patch_size=[1, 2, 2], num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
              text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
              qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024)

WRITE = r"""
import sys, torch
from accelerate import init_empty_weights
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file
from wan_app.checkpoints import convert
import json
cfg = json.loads(sys.argv[2])
with init_empty_weights():
    m = WanTransformer3DModel.from_config(cfg)
shapes = convert.dit_diffusers_to_official({k: v for k, v in m.state_dict().items()})
g = torch.Generator().manual_seed(0)
sd = {}
for k, v in shapes.items():
    dt = torch.float32 if k.startswith("patch_embedding") else torch.float16
    sd["model.diffusion_model." + k] = (torch.randn(v.shape, generator=g) * 0.02).to(dt)
save_file(sd, sys.argv[1])
"""

LOAD = r"""
import resource, sys, time, json
t0 = time.perf_counter()
import torch
kind, path, cfgdir = sys.argv[1:4]
from diffusers import WanTransformer3DModel
from wan_app import catalog
from wan_app.checkpoints import identify_file
from wan_app.checkpoints.load import build_transformer
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t1 = time.perf_counter()
if kind == "ours":
    model = build_transformer(identify_file([__import__("pathlib").Path(path)]), catalog.get("wan2.1-t2v-1.3b"), torch.float16)
else:
    model = WanTransformer3DModel.from_single_file(path, config=cfgdir, subfolder="transformer",
                                                   torch_dtype=torch.float16, local_files_only=True)
t2 = time.perf_counter()
total = 0.0
with torch.no_grad():
    # Read every weight so mmap'd pages are really read, without allocating: an earlier version used
    # p.float().sum(), whose fp32 temporaries page-fault ~820k times per pass for 2.8 GB (measured with
    # ru_minflt, for mmap'd and anonymous weights alike); diffusers' load has already warmed the
    # allocator with its copies, so that touch charged our loader ~0.8 s of malloc state, not reading.
    for p in model.parameters():
        total += float(p.amax()) - float(p.amin())
t3 = time.perf_counter()
n = sum(p.numel() for p in model.parameters())
print(json.dumps(dict(load_s=t2 - t1, touch_s=t3 - t2, base_rss=base,
                      peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, params=n, checksum=total)))
"""


def run(kind: str, path: Path, cfgdir: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", LOAD, kind, str(path), str(cfgdir)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="wan_load_bench_", dir="/tmp"))
    ckpt = tmp / "wan2.1_t2v_1.3B_fp16.safetensors"
    cfgdir = tmp / "config"
    (cfgdir / "transformer").mkdir(parents=True)
    (cfgdir / "transformer" / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", **CONFIG}))
    try:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", WRITE, str(ckpt), json.dumps(CONFIG)], check=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
        size = ckpt.stat().st_size
        lines = [f"checkpoint: ComfyUI-layout Wan2.1 T2V 1.3B, F16 (+F32 patch_embedding), {size / 1e9:.3f} GB "
                 f"(written in {time.perf_counter() - t:.0f} s)",
                 f"machine: {os.cpu_count()} CPUs, torch {__import__('torch').__version__}, "
                 f"diffusers {__import__('diffusers').__version__}; each run a fresh process, load as float16, "
                 "then every weight touched",
                 "",
                 f"{'loader':<10}{'load s':>8}{'touch s':>9}{'peak RSS GB':>13}{'RSS-imports GB':>16}"
                 f"{'peak/ckpt':>11}{'checksum':>14}"]
        results = {}
        for kind in ("diffusers", "ours", "diffusers", "ours"):
            r = run(kind, ckpt, cfgdir)
            results.setdefault(kind, []).append(r)
            lines.append(f"{kind:<10}{r['load_s']:>8.2f}{r['touch_s']:>9.2f}{r['peak_rss'] / 1e9:>13.2f}"
                         f"{(r['peak_rss'] - r['base_rss']) / 1e9:>16.2f}{r['peak_rss'] / size:>11.2f}"
                         f"{r['checksum']:>14.4f}")
            print(lines[-1], flush=True)
        ours, theirs = results["ours"], results["diffusers"]
        best = lambda rs, k: min(r[k] for r in rs)  # noqa: E731
        lines += ["",
                  f"ours: best load {best(ours, 'load_s'):.2f} s vs diffusers {best(theirs, 'load_s'):.2f} s; "
                  f"peak RSS {best(ours, 'peak_rss') / size:.2f} x checkpoint (target <= 1.2) vs diffusers "
                  f"{best(theirs, 'peak_rss') / size:.2f} x",
                  f"same weights loaded: {abs(ours[0]['checksum'] - theirs[0]['checksum']) < 1e-3 * abs(theirs[0]['checksum']) + 1e-3}"]
        text = "\n".join(lines) + "\n"
        print(text)
        out = ROOT / "bench" / "results" / "load_bench.txt"
        tmp_out = out.with_suffix(".tmp")
        tmp_out.write_text(text)
        os.replace(tmp_out, out)
    finally:
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        tmp.rmdir()


if __name__ == "__main__":
    main()
