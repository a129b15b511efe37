"""The UI's pure parts, without a server: the event renderer, the job registry, what may be served, the
outputs-folder rule, logins, origins and where the password comes from."""
from __future__ import annotations

import html
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from ui import common, serving, server
from ui.jobs import Busy, Jobs
from wan_app import events
from wan_app.errors import UserError


# ---------------------------------------------------------------------------------------------- render
class _Box:
    """Stands in for a component: RunView only uses them as dict keys."""


def _view():
    from ui.render import RunView
    v = RunView.__new__(RunView)
    v.prefix = "t"
    v.status, v.notices, v.badge, v.preview, v.video, v.plan, v.error = (_Box() for _ in range(7))
    return v


def _text(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def _statuses(updates, view) -> list[str]:
    return [u[view.status] for u in updates if view.status in u]


def test_the_status_line_keeps_the_eta_between_engine_updates_and_never_echoes_itself():
    v = _view()
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    stream = [events.Progress("load", message="loading Tiny Wan2.1"),
              events.Progress("encode", message="encoding the prompt"),
              events.Preview(1, 4, frames), events.Progress("sample", 1, 4, eta_s=90.0),
              events.Preview(2, 4, frames), events.Progress("sample", 2, 4),
              events.Progress("decode", message="decoding with the VAE")]
    updates = list(v.render(iter(stream)))
    lines = [_text(s) for s in _statuses(updates, v)]
    assert lines[0] == "Loading Tiny Wan2.1"
    assert lines[1] == "Encoding the prompt"          # not "Encoding the prompt — encoding the prompt"
    assert "step 1/4" in lines[2] and "1:30 left" in lines[2]
    # previews do not touch the status line, so the ETA cannot blink off between steps
    assert sum(1 for u in updates if v.preview in u and v.status in u) == 0
    assert "step 2/4" in lines[3] and "left" in lines[3], "the ETA vanished on a step without a new estimate"
    assert "left" in lines[4] and lines[4].startswith("Decoding")


def test_a_long_job_names_its_windows_and_a_finished_window_is_not_shown_as_denoising():
    v = _view()
    stream = [events.Progress("sample", 6, 6, eta_s=30.0, window=0, windows=3),
              events.WindowDone(0, 3, 9, Path("/x/2024-01-01/a.mp4")),
              events.Progress("encode", message="window 2/3: encoding the prompt", window=1, windows=3)]
    lines = [_text(s) for s in _statuses(list(v.render(iter(stream))), v)]
    assert lines[0].startswith("Window 1/3 · Denoising · step 6/6")
    assert lines[1].startswith("Window 1/3 · done, 9 frames so far") and "Denoising" not in lines[1]
    assert lines[2].startswith("Window 2/3 · Encoding the prompt") and "window 2/3:" not in lines[2]


def test_notices_stay_on_the_page_and_failures_go_next_to_generate_and_to_the_top():
    v = _view()
    cut = "The prompt is 40 tokens longer than umT5's 512; the end was cut"
    updates = list(v.render(iter([events.Notice(cut), events.Failed("frames: 13 is not 4n+1", "use 9 or 13")])))
    assert any(cut in html.unescape(u.get(v.notices, "")) for u in updates)
    last = updates[-1]
    assert "frames: 13 is not 4n+1" in last[v.error] and "use 9 or 13" in last[v.error]
    assert 'data-phase="failed"' in last[v.status] and "frames: 13 is not 4n+1" in last[v.status]


def test_the_page_shows_only_videos_the_serving_rule_accepts(tmp_path):
    v = _view()
    upd = list(v.render(iter([events.Finished(tmp_path / "elsewhere.mp4", {}, 1.0)]), serve=lambda p: None))
    assert upd[-1][v.video] is None


# ---------------------------------------------------------------------------------------------- jobs
def test_stop_cancels_the_running_job_whatever_was_clicked_since():
    jobs = Jobs()
    first = jobs.submit("s1", "extend")
    jobs.claim(first.id, "s1", "extend", "ev1")
    with pytest.raises(Busy):          # a second Generate from the same session is refused
        jobs.submit("s1", "clip")
    other = jobs.submit("s2", "clip")  # another browser's job waits behind
    assert jobs.ahead(other) == 1
    assert [j.id for j in jobs.stop("s1")] == [first.id]
    assert first.cancel.is_set() and not other.cancel.is_set()


def test_a_job_stopped_while_queued_ends_when_its_turn_comes_and_frees_the_session():
    jobs = Jobs()
    job = jobs.submit("s", "clip")
    jobs.stop("s")
    assert jobs.active("s") is None
    assert jobs.claim(job.id, "s", "clip", "ev").cancel.is_set()


def test_gradio_cancel_reaches_the_job_even_when_it_arrives_before_the_claim():
    jobs = Jobs()
    jobs.cancel_event("api-session", "ev-early")            # Job.cancel() right after submit
    assert jobs.claim(None, "api-session", "clip", "ev-early").cancel.is_set()
    running = jobs.claim(None, "api-2", "clip", "ev-2")
    assert jobs.cancel_event("api-2", "ev-2") and running.cancel.is_set()


# ---------------------------------------------------------------------------------------------- serving
@pytest.fixture
def outputs_tree(tmp_path):
    out = tmp_path / "outputs"
    day = out / "2024-05-01"
    day.mkdir(parents=True)
    (day / "a.mp4").write_bytes(b"\0\0\0\x18ftypisom")
    (day / "a.json").write_text("{}")
    (out / "root.mp4").write_bytes(b"x")
    secret = tmp_path / "secret.mp4"
    secret.write_text("secret")
    (day / "link.mp4").symlink_to(secret)
    (out / "2024-05-02").symlink_to(tmp_path)            # a day folder that is a symlink
    (tmp_path / "b.mp4").write_bytes(b"x")
    temp = tmp_path / "temp" / "abc"
    temp.mkdir(parents=True)
    (temp / "up.mp4").write_bytes(b"x")
    (temp / "page.html").write_text("<script>alert(1)</script>")
    (temp / "img.svg").write_text("<svg onload=alert(1)></svg>")
    return out, tmp_path / "temp"


def test_only_regular_videos_in_the_dated_folders_and_media_in_the_temp_folder_are_served(outputs_tree):
    out, temp = outputs_tree
    p = serving.Policy(out, temp)
    assert p.may_serve(str(out / "2024-05-01" / "a.mp4"))
    assert p.may_serve(str(temp / "abc" / "up.mp4"))
    for refused in [out / "2024-05-01" / "a.json", out / "2024-05-01" / "link.mp4", out / "root.mp4",
                    out / "2024-05-02" / "b.mp4", out, out / "2024-05-01", temp / "abc" / "page.html",
                    temp / "abc" / "img.svg", temp, Path("/etc/passwd"),
                    out / "2024-05-01" / ".." / ".." / "secret.mp4"]:
        assert not p.may_serve(str(refused)), refused
    assert not p.may_serve("https://example.com/a.mp4")


def test_old_gradio_caches_in_the_outputs_folder_are_removed_and_nothing_else(tmp_path):
    cache = tmp_path / ".gradio" / ("ab" * 32)
    cache.mkdir(parents=True)
    (cache / "upload.html").write_bytes(b"x" * 1000)
    keep = tmp_path / ".gradio" / "flagged"
    keep.mkdir()
    assert serving.clean_old_gradio_cache(tmp_path) == 1000
    assert not cache.exists() and keep.exists()


def test_temp_folders_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / f"{serving.TEMP_PREFIX}999999999-x"
    live = tmp_path / f"{serving.TEMP_PREFIX}{os.getpid()}-y"
    dead.mkdir()
    live.mkdir()
    assert serving.clean_stale_temp_dirs(tmp_path) == [dead]
    assert live.exists()


def test_failed_logins_are_limited_per_client():
    lim = serving.LoginLimiter(max_failures=3, window_s=60)
    for _ in range(3):
        assert lim.retry_after("1.2.3.4", now=100.0) == 0
        lim.failed("1.2.3.4", now=100.0)
    assert lim.retry_after("1.2.3.4", now=101.0) > 0
    assert lim.retry_after("5.6.7.8", now=101.0) == 0          # per client
    assert lim.retry_after("1.2.3.4", now=161.0) == 0          # the window passes


@pytest.mark.parametrize("origin,host,ok", [
    ("http://127.0.0.1:7860", "127.0.0.1:7860", True),
    ("https://abc.gradio.live", "abc.gradio.live", True),
    ("http://evil.example", "127.0.0.1:7860", False),
    ("http://127.0.0.1:9999", "127.0.0.1:7860", False),
    ("null", "127.0.0.1:7860", False),
])
def test_a_request_is_same_origin_only_when_its_page_names_the_host_it_went_to(origin, host, ok):
    assert serving.same_origin(origin, host) is ok


# ---------------------------------------------------------------------------------------------- folders
def test_an_outputs_folder_set_from_the_ui_is_new_or_app_owned(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    used = tmp_path / "notes"
    used.mkdir()
    (used / "taxes.pdf").write_text("x")
    app_owned = tmp_path / "outs"
    (app_owned / "2024-01-01").mkdir(parents=True)
    assert common.check_outputs_folder(str(tmp_path / "new"), [models]) == (tmp_path / "new").resolve()
    assert common.check_outputs_folder(str(app_owned), [models]) == app_owned.resolve()
    for bad, words in [("/", "root"), (str(Path.home()), "home"), ("/etc", "system"),
                       (str(models), "models folder"), (str(models / "sub"), "models folder"),
                       (str(used), "already holds"), ("", "empty")]:
        with pytest.raises(UserError) as e:
            common.check_outputs_folder(bad, [models])
        assert e.value.field == "outputs_dir" and words in e.value.problem + e.value.fix, (bad, e.value)


# ---------------------------------------------------------------------------------------------- auth
def test_the_password_comes_from_a_file_the_environment_or_the_command_line(tmp_path):
    f = tmp_path / "auth.txt"
    f.write_text("\nalice:from-file\n")
    assert server.resolve_auth(None, True, False, str(f), environ={}) == (("alice", "from-file"), False)
    env = {server.AUTH_ENV: "bob:from-env"}
    assert server.resolve_auth(None, True, False, None, environ=env) == (("bob", "from-env"), False)
    assert server.resolve_auth("carol:from-flag", True, False, None, environ=env)[0] == ("carol", "from-flag")
    (user, pw), generated = server.resolve_auth(None, True, False, None, environ={})
    assert generated and len(pw) >= 12
    with pytest.raises(UserError) as e:
        server.resolve_auth(None, True, False, str(tmp_path / "missing.txt"), environ={})
    assert e.value.field == "auth-file"
    with pytest.raises(UserError) as e:
        server.resolve_auth(None, True, False, None, environ={server.AUTH_ENV: "nocolon"})
    assert e.value.field == server.AUTH_ENV


@pytest.mark.parametrize("port", [0, 70000, -1, "http"])
def test_a_port_out_of_range_is_one_clear_error(port):
    with pytest.raises(UserError) as e:
        server.check_port(port)
    assert e.value.field == "port" and "65535" in e.value.fix


def test_a_port_left_in_time_wait_by_a_restart_counts_as_free():
    import socket
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    conn.close()                       # the server side closes first: its socket stays in TIME_WAIT
    time.sleep(0.1)
    client.close()
    listener.close()
    assert server.free_port(port, "127.0.0.1") == (port, None)


def test_the_hardware_box_gives_short_reasons_not_exception_text():
    from wan_app.hardware import Hardware
    hw = Hardware.simulated(None, 16, attention_failures={
        "sage": "ModuleNotFoundError: No module named 'sageattention'",
        "flash": "RuntimeError: FlashAttention only supports Ampere GPUs or newer.\n  File \"x.py\", line 3"})
    text = common.hardware_text(hw)
    assert "sage: not available (not installed)" in text
    assert "flash: not available (FlashAttention only supports Ampere GPUs or newer.)" in text
    assert "Error" not in text and "File " not in text


def test_an_outputs_folder_given_on_the_command_line_that_exposes_the_machine_gets_a_warning(tmp_path, capsys):
    server._warn_outputs(Path.home(), [tmp_path / "models"])
    err = capsys.readouterr().err
    assert "warning: outputs folder" in err and "home" in err
    server._warn_outputs(tmp_path / "outputs", [tmp_path / "models"])
    assert capsys.readouterr().err == ""


def test_only_a_local_unshared_visit_is_the_owner_at_the_machine():
    from types import SimpleNamespace
    engine = SimpleNamespace(outputs_dir="outputs", models_dirs=["models"])
    visit = lambda host: SimpleNamespace(client=SimpleNamespace(host=host))  # noqa: E731
    local = common.AppContext(engine=engine, settings=None)
    listening = common.AppContext(engine=engine, settings=None, listen=True)
    shared = common.AppContext(engine=engine, settings=None, share=True)
    assert local.owner_at_machine(visit("127.0.0.1"))
    assert listening.owner_at_machine(visit("127.0.0.1")) and not listening.owner_at_machine(visit("192.0.2.7"))
    assert not shared.owner_at_machine(visit("127.0.0.1")), "through a share tunnel every visit looks local"
