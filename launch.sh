#!/usr/bin/env bash
# One click: installs on first run (a few minutes), then starts the studio and opens the browser.
# Flags pass through: --port N --listen --share --auth user:pass --models-dir DIR --outputs-dir DIR
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install.sh app
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python app.py "$@"
