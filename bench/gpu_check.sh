#!/usr/bin/env bash
# One command on a GPU machine (issue 11): install, then measure everything issue 11 asks for, then
# print one table (also written to bench/results/gpu_check.md). About 8 minutes on an H100/H200 from a
# fresh clone. The check itself downloads nothing: its models are random full-size weights made on the
# GPU. Without an NVIDIA GPU it says so and exits 0 (before installing anything).
#
#   bash bench/gpu_check.sh                       # options go to bench/gpu_check.py (--budget-s, --only)
#   GPU_CHECK_PYTHON=python3 bash bench/gpu_check.sh   # use a Python that already has CUDA torch + the
#                                                      # requirements (no install step, e.g. offline)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False PYTHONUNBUFFERED=1

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check needs an NVIDIA GPU (no working nvidia-smi here): nothing measured."
  echo "On a CPU, '.venv/bin/python bench/gpu_check.py --cpu-smoke' runs the same code paths on tiny models."
  exit 0
fi
nvidia-smi -L

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
  PY="$GPU_CHECK_PYTHON"
else
  bash scripts/install.sh            # idempotent: a stamp skips it when nothing changed
  PY=.venv/bin/python
fi
exec "$PY" bench/gpu_check.py "$@"
