#!/usr/bin/env bash
# One click: installs on first run (a few minutes), then starts the studio and opens the browser.
# Flags pass through: --port N --listen --share --auth-file FILE --models-dir DIR --outputs-dir DIR (python app.py --help)
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install.sh app
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python app.py "$@"
