"""Start the web app for tests: `python tests/ui_app_runner.py --port N --models-dir D --outputs-dir O
[--step-delay S] [--step-delay-file F] [--share] [--listen] [--auth U:P] [--auth-file F] [--settings F]`.

Tests launch it as a subprocess and wait for the port. `--step-delay` adds a sleep before every denoising
step through the engine's public `step_hooks`, so a browser or client can watch previews change and press
Stop while tiny models would otherwise finish in milliseconds. `--step-delay-file` holds a number that
replaces it while the app runs (read before every step): a test slows the steps down while it acts on a
busy machine, and speeds them up again to show what an ignored Stop would have led to.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ui.server import launch  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--models-dir", action="append", required=True)
    p.add_argument("--outputs-dir", required=True)
    p.add_argument("--settings", default=None, help="default: settings.json inside the outputs folder's parent")
    p.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep before each step")
    p.add_argument("--step-delay-file", default=None, help="a file whose number replaces --step-delay")
    p.add_argument("--share", action="store_true")
    p.add_argument("--listen", action="store_true")
    p.add_argument("--auth", default=None)
    p.add_argument("--auth-file", default=None)
    args = p.parse_args(argv)
    args.no_browser = True
    if args.settings is None:
        args.settings = str(Path(args.outputs_dir).resolve().parent / "settings.json")

    def delay() -> float:
        if args.step_delay_file:
            try:
                return float(Path(args.step_delay_file).read_text().strip())
            except (OSError, ValueError):
                pass
        return args.step_delay

    def configure(engine):
        if args.step_delay > 0 or args.step_delay_file:
            engine.step_hooks.append(lambda step, expert: time.sleep(max(0.0, delay())))

    return launch(args, configure_engine=configure)


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------------------------------- for tests
class RunningApp:
    """A runner subprocess; `url`, `port`, `outputs_dir`, and the console text seen so far in `log()`."""

    def __init__(self, proc, port: int, outputs_dir: Path, log_path: Path, delay_path: Path | None = None):
        self.proc, self.port, self.outputs_dir, self.log_path = proc, port, outputs_dir, log_path
        self.delay_path = delay_path
        self.url = f"http://127.0.0.1:{port}/"

    def set_step_delay(self, seconds: float) -> None:
        """The seconds every following denoising step waits (written whole: the app never reads half)."""
        tmp = self.delay_path.with_suffix(".tmp")
        tmp.write_text(f"{seconds}")
        os.replace(tmp, self.delay_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except Exception:
                self.proc.kill()
                self.proc.wait(timeout=15)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(models_dirs, outputs_dir, workdir, *extra: str, step_delay: float = 0.0,
              timeout: float = 120.0, settings: Path | None = None, port: int | None = None,
              env: dict | None = None) -> RunningApp:
    """Launch the runner and wait until it answers HTTP (or fail with its console output)."""
    import subprocess
    import urllib.request
    port = port or free_port()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = time.time_ns()
    log_path = workdir / f"app-{port}-{stamp}.log"
    delay_path = workdir / f"step-delay-{port}-{stamp}.txt"
    delay_path.write_text(f"{step_delay}")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--port", str(port), "--outputs-dir", str(outputs_dir),
           "--settings", str(settings or workdir / f"settings-{port}.json"), "--step-delay", str(step_delay),
           "--step-delay-file", str(delay_path), *extra]
    for d in models_dirs:
        cmd += ["--models-dir", str(d)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
               **(env or {}))
    log_file = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                            cwd=str(Path(__file__).resolve().parents[1]))
    app = RunningApp(proc, port, Path(outputs_dir), log_path, delay_path)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}:\n{app.log()}")
        m = re.search(r"is running: http://127\.0\.0\.1:(\d+)", app.log())
        if m:
            app.port, app.url = int(m.group(1)), f"http://127.0.0.1:{m.group(1)}/"
            try:
                urllib.request.urlopen(app.url, timeout=2)
                return app
            except Exception:
                pass
        time.sleep(0.3)
    app.stop()
    raise RuntimeError(f"the app did not start within {timeout}s:\n{app.log()}")
