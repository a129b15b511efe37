"""What the app promises about safety: a password whenever it is reachable from elsewhere (and a limit on
guessing it), nothing served but the app's own videos and media previews, no page of another site can
drive it, uploads never come back as a page, folders changed only by the owner at the machine, caches
cleaned, and a share tunnel that cannot open does not take the app down."""
from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from tests.ui_app_runner import start_app
from ui import common, server
from wan_app.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- unit
def test_local_use_needs_no_password_but_listen_and_share_always_get_one():
    assert server.resolve_auth(None, listen=False, share=False, environ={}) == (None, False)
    for listen, share in ((True, False), (False, True), (True, True)):
        (user, password), generated = server.resolve_auth(None, listen=listen, share=share, environ={})
        assert generated and user and len(password) >= 12
    a, _ = server.resolve_auth(None, listen=True, share=False, environ={})
    b, _ = server.resolve_auth(None, listen=True, share=False, environ={})
    assert a[1] != b[1], "a generated password must be random"
    assert server.resolve_auth("me:s3cret:with:colons", listen=True, share=False, environ={}) == \
        (("me", "s3cret:with:colons"), False)


@pytest.mark.parametrize("bad", ["nocolon", ":pw", "user:", ""])
def test_a_malformed_auth_is_refused_with_the_expected_form(bad):
    with pytest.raises(UserError) as e:
        server.parse_auth(bad)
    assert e.value.field == "auth" and "USER:PASSWORD" in e.value.problem


def test_models_and_settings_are_blocked_and_no_folder_is_allowed_whole(tmp_path):
    out, models, settings = tmp_path / "out", tmp_path / "models", tmp_path / "settings.json"
    allowed, blocked = server.served_paths(out, [models], settings)
    assert allowed == []
    assert str(models.resolve()) in blocked and str(settings.resolve()) in blocked


def _mp4_bytes() -> bytes:
    return b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64


def test_an_upload_must_be_a_video_by_name_and_by_content(tmp_path, monkeypatch):
    good = tmp_path / "clip.mp4"
    good.write_bytes(_mp4_bytes())
    assert common.check_video_upload(str(good)) == good
    webm = tmp_path / "clip.webm"
    webm.write_bytes(b"\x1a\x45\xdf\xa3" + b"\x00" * 32)
    assert common.check_video_upload(webm) == webm
    script = tmp_path / "evil.html"
    script.write_bytes(_mp4_bytes())
    with pytest.raises(UserError, match="not a video file"):
        common.check_video_upload(script)
    disguised = tmp_path / "evil.mp4"
    disguised.write_text("<script>alert(1)</script>")
    with pytest.raises(UserError, match="does not contain video data"):
        common.check_video_upload(disguised)
    monkeypatch.setattr(common, "MAX_UPLOAD_BYTES", 32)
    with pytest.raises(UserError, match="at most 2 GB"):
        common.check_video_upload(good)


def test_a_port_out_of_range_on_the_command_line_is_one_clear_line():
    r = subprocess.run([sys.executable, "app.py", "--port", "70000", "--no-browser"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "70000 is not a port" in r.stderr and "Traceback" not in r.stderr + r.stdout


# ---------------------------------------------------------------------------------------------- requests
def request(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    """(status, headers, body) with the path sent byte for byte (urllib/httpx would normalise `..`)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def raw_get(port: int, path: str, headers: dict | None = None) -> int:
    return request(port, "GET", path, headers)[0]


def upload(port: int, name: str, data: bytes, headers: dict | None = None):
    boundary = "wanstudioboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return request(port, "POST", "/gradio_api/upload", {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                                        **(headers or {})}, body)


@pytest.fixture(scope="module")
def plain_app(tiny_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("ui_sec")
    out = work / "outputs"
    day = out / "2024-01-01"
    day.mkdir(parents=True)
    (day / "inside.mp4").write_bytes(_mp4_bytes())
    (day / "inside.json").write_text('{"files": "/home/me/models"}')
    (out / "loose.mp4").write_bytes(_mp4_bytes())
    (work / "secret.txt").write_text("must not be served")
    (day / "evil.mp4").symlink_to(work / "secret.txt")
    old_cache = out / ".gradio" / ("0f" * 32)
    old_cache.mkdir(parents=True)
    (old_cache / "old-upload.html").write_text("<script>alert(1)</script>")
    busy = socket.socket()                # the port asked for is taken by another program
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        app = start_app([tiny_root["diffusers-t2v"].path], out, work, port=busy.getsockname()[1])
    finally:
        app_port_asked = busy.getsockname()[1]
        busy.close()
    app.work, app.port_asked = work, app_port_asked
    yield app
    app.stop()


def test_a_port_taken_by_another_program_is_named_with_the_port_used_instead(plain_app):
    asked = plain_app.port_asked
    assert plain_app.port != asked
    assert f"Port {asked} is taken: another program is already listening on it" in plain_app.log()
    assert f"Serving on port {plain_app.port} instead" in plain_app.log()


def test_a_video_in_a_dated_output_folder_is_served_and_nothing_else_there(plain_app):
    out = plain_app.outputs_dir.resolve()
    status, headers, _ = request(plain_app.port, "GET", f"/gradio_api/file={out}/2024-01-01/inside.mp4")
    assert status == 200 and headers.get("x-content-type-options") == "nosniff"
    for path in [f"{out}/2024-01-01/inside.json", f"{out}/2024-01-01/evil.mp4", f"{out}/loose.mp4",
                 f"{out}/2024-01-01", str(out), f"{out}/2024-01-01/"]:
        assert raw_get(plain_app.port, f"/gradio_api/file={path}") == 403, path


@pytest.mark.parametrize("route", ["/gradio_api/file=", "/gradio_api/file/"])
def test_files_outside_the_outputs_folder_cannot_be_fetched(plain_app, route, tiny_root):
    out = plain_app.outputs_dir.resolve()
    secret = plain_app.work.resolve() / "secret.txt"
    model_file = next(Path(tiny_root["diffusers-t2v"].path).rglob("*.safetensors")).resolve()
    settings = next(plain_app.work.glob("settings-*.json"), None)
    attempts = [
        str(secret),                                          # absolute path
        f"{out}/../secret.txt",                               # climbing out with ..
        f"{out}/2024-01-01/../../secret.txt",
        urllib.parse.quote(f"{out}/../secret.txt", safe=""),  # encoded slashes and dots
        f"{out}/%2e%2e/secret.txt",
        str(model_file),                                      # the weights
        "/etc/passwd",
        str(Path(server.__file__).resolve()),                 # the app's own source
        "https://example.com/x.mp4",                          # the file route is no proxy
    ]
    if settings is not None:
        attempts.append(str(settings.resolve()))
    for path in attempts:
        path = path.lstrip("/") if route.endswith("/") else path
        status = raw_get(plain_app.port, route + path)
        assert status in (403, 404), f"{route}{path} was served ({status})"


def test_the_gallery_never_hands_out_a_symlink(plain_app):
    from gradio_client import Client
    c = Client(plain_app.url, verbose=False)
    job = c.submit("tiny-wan2.1-t2v", "a fox", "", "64x64", 9, 2, 5.0, 5.0, 3.0, 0.875, "unipc", "fixed", 1,
                   api_name="/generate")
    job.result(timeout=180)
    galleries = [o[9] for o in job.outputs() if isinstance(o[9], list)]
    assert galleries, "the finished run did not refresh the gallery"
    assert galleries[-1]
    for item in galleries[-1]:
        media = item.get("image") or item.get("video")
        path = Path(media["path"] if isinstance(media, dict) else media)
        assert path.read_bytes() != b"must not be served"
        assert path.name != "evil.mp4"


def test_uploads_live_outside_the_outputs_folder_and_never_come_back_as_a_page(plain_app):
    served = {}
    for name, data in (("evil.html", b"<script>alert(document.cookie)</script>"),
                       ("evil.svg", b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>"),
                       ("clip.mp4", _mp4_bytes())):
        status, _, body = upload(plain_app.port, name, data)
        assert status == 200, body
        (path,) = json.loads(body)
        assert not Path(path).resolve().is_relative_to(plain_app.outputs_dir.resolve()), path
        served[name] = request(plain_app.port, "GET", f"/gradio_api/file={path}")
    assert served["evil.html"][0] == 403 and served["evil.svg"][0] == 403
    status, headers, _ = served["clip.mp4"]
    assert status == 200 and headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in headers.get("content-security-policy", "")


def test_the_old_cache_in_the_outputs_folder_is_removed_at_start(plain_app):
    assert not (plain_app.outputs_dir / ".gradio").exists()
    assert "Removed the old upload/preview cache" in plain_app.log()


def test_a_local_app_answers_only_to_localhost_and_to_pages_of_its_own_origin(plain_app):
    port = plain_app.port
    assert raw_get(port, "/", {"Host": f"127.0.0.1:{port}"}) == 200
    assert raw_get(port, "/", {"Host": f"localhost:{port}"}) == 200
    assert raw_get(port, "/", {"Host": f"rebind.evil.example:{port}"}) == 403     # DNS rebinding
    assert upload(port, "a.mp4", _mp4_bytes(), {"Origin": "http://evil.example"})[0] == 403
    assert upload(port, "a.mp4", _mp4_bytes(), {"Origin": f"http://127.0.0.1:{port}"})[0] == 200


def test_the_outputs_folder_set_in_settings_cannot_be_a_system_or_home_folder(plain_app, tiny_root):
    from gradio_client import Client
    c = Client(plain_app.url, verbose=False)
    settings = next(plain_app.work.glob("settings-*.json"), None)
    before = settings.read_text() if settings else None
    models = str(tiny_root["diffusers-t2v"].path)
    for bad in ("/", str(Path.home()), "/etc", models):
        msg = c.predict(-1, "auto", "auto", "auto", "auto", "auto", models, bad, "", api_name="/save_settings")
        msg = msg[0] if isinstance(msg, (list, tuple)) else msg
        assert "Outputs folder" in msg and "Saved" not in msg, (bad, msg)
    after = settings.read_text() if settings else None
    assert after == before


# ---------------------------------------------------------------------------------------------- shared
@pytest.fixture(scope="module")
def shared_app(tiny_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("ui_share")
    app = start_app([tiny_root["diffusers-t2v"].path], work / "outputs", work, "--share")
    app.work = work
    yield app
    app.stop()


def test_share_without_auth_generates_a_password_and_refuses_strangers(shared_app):
    from gradio_client import Client
    log = shared_app.log()
    m = re.search(r"user: (\S+)\s+password: (\S+)", log)
    assert m, f"no generated password printed:\n{log}"
    user, password = m.groups()
    assert log.count(password) == 1, "the password must be printed once"
    # offline here: the tunnel fails, the app says so and keeps serving
    assert "share link could not be opened" in log
    assert raw_get(shared_app.port, "/config") == 401
    assert raw_get(shared_app.port, "/gradio_api/info") == 401
    with pytest.raises(Exception):
        Client(shared_app.url, verbose=False)
    with pytest.raises(Exception):
        Client(shared_app.url, auth=(user, "wrong-password"), verbose=False)
    c = Client(shared_app.url, auth=(user, password), verbose=False)
    assert "/generate" in c.view_api(return_format="dict", print_info=False)["named_endpoints"]


def test_a_shared_session_cannot_change_the_folders(shared_app, tiny_root):
    """Through a share tunnel every request comes from this computer, so no shared session counts as the
    owner at the machine: the folders (what is served, where files are written) stay as they are."""
    from gradio_client import Client
    user, password = re.search(r"user: (\S+)\s+password: (\S+)", shared_app.log()).groups()
    c = Client(shared_app.url, auth=(user, password), verbose=False)
    settings = next(shared_app.work.glob("settings-*.json"), None)
    before = settings.read_text() if settings else None
    elsewhere = shared_app.work / "elsewhere"
    elsewhere.mkdir()
    msg = c.predict(-1, "auto", "auto", "auto", "auto", "auto", str(elsewhere), str(shared_app.work / "new-out"),
                    "", api_name="/save_settings")
    msg = msg[0] if isinstance(msg, (list, tuple)) else msg
    assert "only at the computer the app runs on" in msg, msg
    assert (settings.read_text() if settings else None) == before


@pytest.fixture(scope="module")
def listen_app(tiny_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("ui_listen")
    auth = work / "auth.txt"
    auth.write_text("alice:correct-horse\n")
    app = start_app([tiny_root["diffusers-t2v"].path], work / "outputs", work, "--listen", "--auth-file", str(auth))
    yield app
    app.stop()


def test_listen_with_an_auth_file_uses_that_password(listen_app):
    from gradio_client import Client
    assert "password:" not in listen_app.log()        # nothing generated, nothing printed
    assert raw_get(listen_app.port, "/config") == 401
    c = Client(listen_app.url, auth=("alice", "correct-horse"), verbose=False)
    assert "/generate" in c.view_api(return_format="dict", print_info=False)["named_endpoints"]


def test_failed_logins_are_rate_limited_per_client(listen_app):
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    codes = [request(listen_app.port, "POST", "/login", form, b"username=alice&password=guess%d" % i)[0]
             for i in range(7)]
    assert codes[:5] == [400] * 5 and codes[5:] == [429, 429], codes
    status, headers, body = request(listen_app.port, "POST", "/login", form,
                                    b"username=alice&password=correct-horse")
    assert status == 429 and int(headers["retry-after"]) > 0 and b"Try again" in body


def test_a_listening_app_refuses_state_changes_from_other_sites(listen_app):
    port = listen_app.port
    assert upload(port, "a.mp4", _mp4_bytes(), {"Origin": "http://evil.example"})[0] == 403
    assert raw_get(port, "/", {"Host": f"192.0.2.7:{port}"}) == 200      # any name of this machine
