#!/usr/bin/env bash
# Creates .venv and installs the app (and, with "test", the test tools). Idempotent and fast when
# nothing changed: a stamp file records the hash of the requirements that were installed.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-app}"

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || { echo "Python 3.10+ is needed: install it from python.org and run this again." >&2; exit 1; }
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "Python 3.10+ is needed (found $("$PY" --version))." >&2; exit 1; }

[ -x .venv/bin/python ] || { echo "Creating .venv …"; "$PY" -m venv .venv; }
VPY=.venv/bin/python

reqs="requirements.txt"; [ "$mode" = test ] && reqs="requirements.txt requirements-test.txt"
stamp=".venv/.installed-$mode"
want="$(cat $reqs scripts/install.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

# torch first, pinned: on Linux PyPI's torch wheels are CUDA builds (NVIDIA users get CUDA); on a
# machine with a local CPU wheel of this version pip takes that one. TORCH_INDEX_URL picks another
# build (e.g. a ROCm or CPU-only index). A looser pin would pull a different, multi-GB build.
if ! "$VPY" -c 'import torch' 2>/dev/null; then
  echo "Installing PyTorch …"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$VPY" -m pip install --extra-index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION:-2.13.0}"
  else
    "$VPY" -m pip install "torch==${TORCH_VERSION:-2.13.0}"
  fi
fi
echo "Installing requirements ($mode) …"
for r in $reqs; do "$VPY" -m pip install -q -r "$r"; done
"$VPY" -m pip check
echo "$want" > "$stamp"
