"""What the app promises about safety: a password whenever it is reachable from elsewhere, nothing served
but the outputs folder, uploads checked, and a share tunnel that cannot open does not take the app down."""
from __future__ import annotations

import http.client
import re
import urllib.parse
from pathlib import Path

import pytest

from tests.ui_app_runner import start_app
from ui import common, server
from wan_app.errors import UserError


# ---------------------------------------------------------------------------------------------- unit
def test_local_use_needs_no_password_but_listen_and_share_always_get_one():
    assert server.resolve_auth(None, listen=False, share=False) == (None, False)
    for listen, share in ((True, False), (False, True), (True, True)):
        (user, password), generated = server.resolve_auth(None, listen=listen, share=share)
        assert generated and user and len(password) >= 12
    a, _ = server.resolve_auth(None, listen=True, share=False)
    b, _ = server.resolve_auth(None, listen=True, share=False)
    assert a[1] != b[1], "a generated password must be random"
    assert server.resolve_auth("me:s3cret:with:colons", listen=True, share=False) == (("me", "s3cret:with:colons"), False)


@pytest.mark.parametrize("bad", ["nocolon", ":pw", "user:", ""])
def test_a_malformed_auth_is_refused_with_the_expected_form(bad):
    with pytest.raises(UserError) as e:
        server.parse_auth(bad)
    assert e.value.field == "auth" and "USER:PASSWORD" in e.value.problem


def test_only_the_outputs_folder_is_allowed_and_models_and_settings_are_blocked(tmp_path):
    out, models, settings = tmp_path / "out", tmp_path / "models", tmp_path / "settings.json"
    allowed, blocked = server.served_paths(out, [models], settings)
    assert allowed == [str(out.resolve())]
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


# ---------------------------------------------------------------------------------------------- the server
def raw_get(port: int, path: str, headers: dict | None = None) -> int:
    """GET with the path sent byte for byte (urllib/httpx would normalise `..` away before sending)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture(scope="module")
def plain_app(tiny_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("ui_sec")
    out = work / "outputs"
    out.mkdir()
    (out / "2024-01-01").mkdir()
    (out / "2024-01-01" / "inside.txt").write_text("served")
    (work / "secret.txt").write_text("must not be served")
    app = start_app([tiny_root["diffusers-t2v"].path], out, work)
    app.work = work
    yield app
    app.stop()


def test_a_file_inside_the_outputs_folder_can_be_fetched(plain_app):
    inside = plain_app.outputs_dir.resolve() / "2024-01-01" / "inside.txt"
    assert raw_get(plain_app.port, f"/gradio_api/file={inside}") == 200


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
    ]
    if settings is not None:
        attempts.append(str(settings.resolve()))
    for path in attempts:
        path = path.lstrip("/") if route.endswith("/") else path
        status = raw_get(plain_app.port, route + path)
        assert status in (403, 404), f"{route}{path} was served ({status})"


@pytest.fixture(scope="module")
def shared_app(tiny_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("ui_share")
    app = start_app([tiny_root["diffusers-t2v"].path], work / "outputs", work, "--share")
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


def test_listen_with_auth_uses_the_given_password(tiny_root, tmp_path):
    from gradio_client import Client
    app = start_app([tiny_root["diffusers-t2v"].path], tmp_path / "outputs", tmp_path, "--listen",
                    "--auth", "alice:correct-horse")
    try:
        assert "password:" not in app.log()           # nothing generated, nothing printed
        assert raw_get(app.port, "/config") == 401
        c = Client(app.url, auth=("alice", "correct-horse"), verbose=False)
        assert "/generate" in c.view_api(return_format="dict", print_info=False)["named_endpoints"]
    finally:
        app.stop()
