"""Building and launching the web app, and the rules that keep it safe to run:

- beyond this computer (`--listen`, `--share`) it never serves without a password: `--auth user:pass`, or
  one generated with `secrets` and printed once;
- the browser can fetch files from the outputs folder only: it is the one `allowed_paths` entry, and
  Gradio's own temp folder (uploads, preview images) is put *inside* it (hidden `.gradio/`), so nothing
  else on disk is reachable through Gradio's file routes; model folders and the settings file are blocked
  outright in case the outputs folder contains them;
- uploads are limited to 2 GB by Gradio itself and checked for being a video by the Extend tab;
- a share tunnel that cannot open (offline) is reported and the app keeps serving locally.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from wan_app.errors import UserError  # noqa: E402
from wan_app.settings import Settings, load_settings  # noqa: E402

from . import common  # noqa: E402
from .extend_tab import ExtendTab  # noqa: E402
from .settings_tab import SettingsTab  # noqa: E402
from .t2v_tab import T2VTab  # noqa: E402

log = logging.getLogger(__name__)

GENERATED_USER = "wan"
TITLE = "Wan video studio"


# ---------------------------------------------------------------------------------------------- the app
def build_app(engine, settings: Settings, settings_path: str | os.PathLike | None = None,
              settings_notice: str | None = None) -> gr.Blocks:
    """The whole page for this engine. Importable for tests; `launch` adds the network and security."""
    ctx = common.AppContext(engine=engine, settings=settings,
                            settings_path=Path(settings_path) if settings_path else None,
                            settings_notice=settings_notice)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"## {TITLE}\nText to video with Wan2.1 / Wan2.2, planned for this machine's memory.",
                    elem_id="wan-header")
        gr.HTML(f'<div class="wan-notice">{common.html.escape(settings_notice)}</div>' if settings_notice else "",
                visible=bool(settings_notice), elem_id="wan-settings-notice")
        with gr.Tabs():
            with gr.Tab("Text to Video", id="t2v"):
                t2v = T2VTab(ctx)
            with gr.Tab("Extend", id="extend"):
                ExtendTab(ctx, t2v)
            with gr.Tab("Settings", id="settings"):
                SettingsTab(ctx, t2v)
    # GPU events share one concurrency id with limit 1 (see common.GPU); the light ones (a model change
    # re-plans, a gallery refresh) may overlap a run.
    demo.queue(default_concurrency_limit=4)
    demo.wan_context = ctx
    return demo


# ---------------------------------------------------------------------------------------------- security
def parse_auth(text: str) -> tuple[str, str]:
    user, sep, password = (text or "").partition(":")
    if not sep or not user or not password:
        raise UserError("auth", f"'{text}' is not USER:PASSWORD", "write it like --auth me:a-long-password")
    return user, password


def resolve_auth(auth: str | None, listen: bool, share: bool) -> tuple[tuple[str, str] | None, bool]:
    """(credentials or None, whether they were generated). Local-only use needs no password; anything
    reachable from another machine always gets one."""
    if auth:
        return parse_auth(auth), False
    if listen or share:
        return (GENERATED_USER, secrets.token_urlsafe(12)), True
    return None, False


def free_port(start: int, host: str, tries: int = 50) -> int:
    """`start`, or the next port that can be bound (the help text promises: next free if taken)."""
    for port in range(start, start + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
                return port
            except OSError:
                continue
    raise UserError("port", f"no free port in {start}-{start + tries - 1}", "choose another with --port")


def served_paths(outputs_dir: Path, models_dirs: list[Path], settings_path: Path | None):
    """(allowed_paths, blocked_paths) for Gradio's file routes."""
    allowed = [str(outputs_dir.resolve())]
    blocked = [str(Path(d).resolve()) for d in models_dirs]
    if settings_path is not None:
        blocked.append(str(settings_path.resolve()))
    # Only block what is not the outputs folder itself (a models folder that *is* the outputs folder would
    # block every video; the outputs folder is then still the only thing served).
    blocked = [b for b in blocked if Path(b) != outputs_dir.resolve()]
    return allowed, blocked


# ---------------------------------------------------------------------------------------------- launch
def launch(args, configure_engine: Callable[[object], None] | None = None) -> int:
    """Start the web app from app.py's options; blocks until Ctrl+C. Returns the exit code.
    `configure_engine(engine)` runs before the page is built (the test launcher adds step hooks)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)   # Gradio's own startup requests, not news
    from wan_app import outputs
    from wan_app.engine import Engine

    settings_path = Path(getattr(args, "settings", None) or "settings.json")
    settings, notice = load_settings(settings_path)
    if notice:
        print(f"note: {notice}", file=sys.stderr)
    try:
        credentials, generated = resolve_auth(getattr(args, "auth", None), bool(getattr(args, "listen", False)),
                                              bool(getattr(args, "share", False)))
        models_dirs = [Path(d).expanduser() for d in (getattr(args, "models_dir", None) or settings.models_dirs)]
        outputs_dir = outputs.ensure_writable(getattr(args, "outputs_dir", None) or settings.outputs_dir).resolve()
        host = "0.0.0.0" if getattr(args, "listen", False) else "127.0.0.1"
        port = free_port(int(getattr(args, "port", 7860) or 7860), host)
    except UserError as e:
        print(f"error: {e.field}: {e.problem}" + (f"\n  fix: {e.fix}" if e.fix else ""), file=sys.stderr)
        return 2
    # Gradio's temp folder (uploads, preview images, copies of served videos) goes inside the outputs
    # folder, hidden, so "only the outputs folder is served" holds for Gradio's own files too.
    os.environ["GRADIO_TEMP_DIR"] = str(outputs_dir / ".gradio")
    if args.models_dir:
        settings.models_dirs = [str(d) for d in models_dirs]
    if getattr(args, "outputs_dir", None):
        settings.outputs_dir = str(outputs_dir)

    engine = Engine(models_dirs, outputs_dir, overrides=settings.overrides_obj())
    if configure_engine is not None:
        configure_engine(engine)
    demo = build_app(engine, settings, settings_path, notice)
    allowed, blocked = served_paths(outputs_dir, models_dirs, settings_path)

    if credentials and generated:
        print("\n" + "=" * 72)
        print("This app is reachable from other machines, so it needs a password.")
        print(f"  user: {credentials[0]}\n  password: {credentials[1]}")
        print("(generated for this run and printed only here; use --auth USER:PASS to choose your own)")
        print("=" * 72 + "\n", flush=True)
    if getattr(args, "listen", False):
        print(f"Listening on all interfaces, port {port}: http://<this-machine's-address>:{port}", flush=True)

    demo.launch(
        server_name=host, server_port=port, share=bool(getattr(args, "share", False)),
        auth=credentials, auth_message="Wan video studio: enter the user and password printed in the console.",
        inbrowser=not getattr(args, "no_browser", False), prevent_thread_lock=True, show_error=True,
        allowed_paths=allowed, blocked_paths=blocked, max_file_size=common.MAX_UPLOAD,
        theme=gr.themes.Soft(), css=common.CSS, ssr_mode=False, mcp_server=False, pwa=False,
        footer_links=["gradio", "settings"],
    )
    if getattr(args, "share", False) and not demo.share_url:
        print("The public share link could not be opened (no internet, or the tunnel is blocked). "
              f"The app keeps serving at http://{'localhost' if host == '127.0.0.1' else host}:{port}"
              + (" on your network" if host == "0.0.0.0" else "") + ", password protected.", flush=True)
    print(f"Wan video studio is running: http://127.0.0.1:{port}  (Ctrl+C to stop)", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0
