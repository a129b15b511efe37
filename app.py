"""Wan Studio. `python app.py` starts the web app; `python app.py COMMAND --help` for the CLI."""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from wan_app.cli import DEFAULT_MODELS_DIR, DEFAULT_OUTPUTS_DIR, main  # noqa: E402


def port_number(text: str) -> int:
    """argparse type: a TCP port, so `--port 70000` is one clear line instead of a traceback."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 1-65535, e.g. 7860")
    return port


def add_ui_options(parser) -> None:
    g = parser.add_argument_group("web app (when no command is given)")
    g.add_argument("--port", type=port_number, default=7860,
                   help="port to serve on (default: 7860; if it is taken, the next free one, and the app says so)")
    g.add_argument("--listen", action="store_true",
                   help="serve on all network interfaces, not just this computer (requires a password)")
    g.add_argument("--share", action="store_true",
                   help="also open a temporary public link (requires a password; needs internet)")
    g.add_argument("--auth-file", metavar="FILE",
                   help="file holding one line USER:PASS, the password for --listen / --share")
    g.add_argument("--auth", metavar="USER:PASS",
                   help="the password on the command line (other users of this computer can read it in the "
                        "process list: prefer --auth-file or the WAN_STUDIO_AUTH environment variable). "
                        "Without any, --listen / --share generate one and print it")
    g.add_argument("--models-dir", action="append", metavar="DIR",
                   help=f"model weights folder, repeatable (default: from settings, else {DEFAULT_MODELS_DIR})")
    g.add_argument("--outputs-dir", metavar="DIR",
                   help=f"where videos are written (default: from settings, else {DEFAULT_OUTPUTS_DIR})")
    g.add_argument("--settings", metavar="FILE", default="settings.json", help="settings file (default: settings.json)")
    g.add_argument("--no-browser", action="store_true", help="do not open a browser tab")


def launch_ui(args) -> int:
    from ui.server import launch
    return launch(args)


if __name__ == "__main__":
    from wan_app.cli_extend import add_extend_command
    sys.exit(main(extra_commands=[add_extend_command], default=launch_ui, top_level=add_ui_options))
