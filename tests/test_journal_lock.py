"""One run per long-video job: `lock_job` (journal.py) refuses a second resume while the first runs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from wan_app.errors import UserError
from wan_app.journal import Journal, lock_job, lock_path

HOLDER = """
import sys
from wan_app.journal import lock_job
with lock_job(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()          # hold until the test closes stdin or kills us
"""


def hold_in_another_process(video: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(video)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_resume_of_a_running_job_is_refused_at_once(tmp_path):
    video = tmp_path / "clip.mp4"
    proc = hold_in_another_process(video)
    try:
        with pytest.raises(UserError) as e:
            with lock_job(video):
                pytest.fail("two runs of one job")
        assert e.value.field == "resume" and "clip.mp4 is already running" in e.value.problem
        assert f"process {proc.pid}" in e.value.problem
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    with lock_job(video):          # the first run finished: the job is free again
        pass


def test_a_killed_run_leaves_its_job_free(tmp_path):
    video = tmp_path / "clip.mp4"
    proc = hold_in_another_process(video)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with lock_job(video) as held:
        assert held == lock_path(video)


def test_two_threads_of_one_process_cannot_run_one_job(tmp_path):
    video = tmp_path / "clip.mp4"
    errors = []
    with Journal(video=str(video), request={}, windows=[9]).lock():
        t = threading.Thread(target=lambda: errors.append(_try(video)))
        t.start()
        t.join()
    assert errors == ["resume"]


def _try(video):
    try:
        with lock_job(video):
            return None
    except UserError as e:
        return e.field


def test_the_lock_file_is_hidden_and_gone_after_the_run(tmp_path):
    video = tmp_path / "clip.mp4"
    with lock_job(video) as held:
        assert held.name.startswith(".") and held.parent == tmp_path and held.exists()
    assert not held.exists()
