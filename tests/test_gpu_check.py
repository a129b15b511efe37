"""bench/gpu_check.sh: without a GPU it says so and exits 0; its measuring code runs end to end on tiny
models on the CPU (--cpu-smoke), so a GPU run does not fail on a wiring mistake. GPU numbers come
from running it on a GPU, never from here."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def test_the_shell_script_without_a_gpu_says_it_needs_one_and_exits_0(tmp_path):
    # a PATH without nvidia-smi: the script must stop before installing anything
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60, env=ENV | {"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "needs an NVIDIA GPU" in r.stdout
    assert "Installing" not in r.stdout + r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would measure")
def test_the_python_check_without_cuda_says_it_needs_a_gpu_and_exits_0():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True,
                       timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "needs an NVIDIA GPU" in r.stdout and "|" not in r.stdout


def test_the_smoke_run_goes_through_every_section_and_prints_one_table():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--cpu-smoke"], capture_output=True,
                       text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "FAILED" not in out, out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| section | what | plan | s/step")
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]) for line in table[1:]}
    for want in [("1.3B", "planner's plan"), ("1.3B", "attention sdpa"), ("1.3B", "torch.compile of the blocks"),
                 ("14B", "fp32 resident"), ("14B", "fp8 upcast, resident"), ("14B", "fp8 matmul, resident"),
                 ("A14B", "planner's plan")]:
        assert want in rows, (want, rows)
    mag = next(line for line in table if "MagCache" in line)
    skipped, total = (int(x) for x in mag.split("skipped ")[1].split(" forwards")[0].split(" of "))
    assert 0 < skipped < total
    assert "fp8 matmul is only faster on NVIDIA GPUs" in out            # the CPU's probe answer, as a note
    assert "switch" in next(line for line in table if line.startswith("| A14B"))
