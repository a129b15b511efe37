#!/usr/bin/env bash
# Runs the whole test suite on CPU: installs the app and test tools into .venv, Debian's Chromium for
# the browser test, builds tiny random models (no downloads), then pytest. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install.sh test
if [ "$(uname -s)" = Linux ] && [ ! -x /usr/bin/chromium ]; then
  echo "Installing Debian's chromium for the browser test …"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
# two workers (pytest-xdist): the web-app tests run on one of them in turn (tests/conftest.py)
exec .venv/bin/python -m pytest -q -n 2 --dist loadgroup "$@"
