"""The outputs folder: names, listing, writability, and what may be served."""
from __future__ import annotations

import datetime as dt
import os
import time

import numpy as np
import pytest

from wan_app.errors import UserError
from wan_app.media import write_mp4
from wan_app.outputs import ensure_writable, is_inside, list_outputs, new_output_path, slugify

NOON = dt.datetime(2025, 3, 7, 12, 4, 5)


def tiny_video(path, meta=None):
    return write_mp4(np.zeros((1, 16, 16, 3), np.uint8), path, fps=16, metadata=meta)


def test_output_path_is_day_folder_time_slug_and_seed(tmp_path):
    p = new_output_path(tmp_path, "A red fox, running through snow!", 1234, now=NOON)
    assert p == tmp_path / "2025-03-07" / "120405_a-red-fox-running-through-snow_1234.mp4"
    assert p.parent.is_dir() and not p.exists()


def test_slug_is_ascii_and_at_most_40_chars():
    slug = slugify("Ünïcödé café — " + "very long prompt " * 10)
    assert slug.startswith("unicode-cafe-very-long")
    assert len(slug) <= 40 and slug.isascii() and not slug.endswith("-")
    assert slugify("一只猫在雪地里奔跑") == "video"
    assert slugify("../../etc/passwd") == "etc-passwd"


def test_new_output_path_never_overwrites(tmp_path):
    first = new_output_path(tmp_path, "cat", 7, now=NOON)
    tiny_video(first)
    second = new_output_path(tmp_path, "cat", 7, now=NOON)
    assert second != first and second.name == "120405_cat_7-2.mp4"
    second.with_suffix(".json").write_text("{}")       # a leftover sidecar also reserves the name
    third = new_output_path(tmp_path, "cat", 7, now=NOON)
    assert third.name == "120405_cat_7-3.mp4"


def test_ensure_writable_creates_nested_folders_and_leaves_no_test_file(tmp_path):
    target = tmp_path / "a" / "b"
    assert ensure_writable(target) == target
    assert target.is_dir() and list(target.iterdir()) == []


def test_ensure_writable_rejects_a_folder_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError) as e:
        ensure_writable(blocker / "outputs")
    assert e.value.field == "outputs_dir"
    assert "not writable" in e.value.problem and "--outputs-dir" in e.value.fix


def test_ensure_writable_rejects_a_folder_that_exists_but_refuses_files(tmp_path, monkeypatch):
    # A read-only mount or a full disk: the folder is there, only writing a file shows the problem.
    # (Simulated: the tests may run as root, which ignores permission bits.)
    import wan_app.outputs as outputs

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(UserError) as e:
        ensure_writable(tmp_path)
    assert e.value.field == "outputs_dir" and "Permission denied" in e.value.problem


def test_list_outputs_is_newest_first_with_metadata_and_only_finished_mp4s(tmp_path):
    old = tiny_video(new_output_path(tmp_path, "old", 1, now=NOON), {"prompt": "old"})
    new = tiny_video(new_output_path(tmp_path, "new", 2, now=NOON + dt.timedelta(days=1)),
                     {"prompt": "new"})
    os.utime(old, (time.time() - 100, time.time() - 100))
    day = new.parent
    (day / ".120405_x_1.mp4.1a2b3c4d.partial").write_bytes(b"half")   # being written
    (day / ".hidden.mp4").write_bytes(b"x")
    (day / "empty.mp4").write_bytes(b"")
    (day / "notes.txt").write_text("x")
    parts = day / "120405_long_3.parts"
    parts.mkdir()
    tiny_video(parts / "seg_00000.mp4")
    items = list_outputs(tmp_path)
    assert [i.path for i in items] == [new, old]
    assert [i.metadata for i in items] == [{"prompt": "new"}, {"prompt": "old"}]
    assert items[0].created >= items[1].created
    assert [i.path for i in list_outputs(tmp_path, limit=1)] == [new]


def test_list_outputs_of_a_missing_folder_is_empty(tmp_path):
    assert list_outputs(tmp_path / "none") == []


def test_is_inside_accepts_files_in_the_outputs_folder(tmp_path):
    f = tiny_video(new_output_path(tmp_path, "x", 1, now=NOON))
    assert is_inside(f, tmp_path)
    assert is_inside(tmp_path / "2025-03-07" / ".." / "2025-03-07" / f.name, tmp_path)


def test_is_inside_rejects_dotdot_escapes_and_lookalike_siblings(tmp_path):
    root = tmp_path / "outputs"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("s")
    assert not is_inside(root / ".." / "secret.txt", root)
    assert not is_inside(str(root) + "/../../etc/passwd", root)
    sibling = tmp_path / "outputs2"
    sibling.mkdir()
    assert not is_inside(sibling / "a.mp4", root)


def test_is_inside_rejects_symlink_escapes(tmp_path):
    root = tmp_path / "outputs"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    (root / "link.mp4").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path)
    assert not is_inside(root / "link.mp4", root)
    assert not is_inside(root / "dirlink" / "secret.txt", root)
    inside = root / "real.mp4"
    inside.write_bytes(b"x")
    (root / "alias.mp4").symlink_to(inside)
    assert is_inside(root / "alias.mp4", root)


# ---- only finished, regular videos are listed -----------------------------------------------------------

def test_an_unfinished_long_video_is_not_listed_as_finished(tmp_path):
    done = tiny_video(new_output_path(tmp_path, "done", 1, now=NOON))
    growing = tiny_video(new_output_path(tmp_path, "growing", 2, now=NOON))
    growing.with_name(growing.stem + ".journal.json").write_text("{}")     # its journal: still being made
    assert [i.path for i in list_outputs(tmp_path)] == [done]
    both = {i.path: i.finished for i in list_outputs(tmp_path, include_unfinished=True)}
    assert both == {done: True, growing: False}


def test_symlinked_videos_and_day_folders_are_not_listed(tmp_path):
    outside = tmp_path / "elsewhere"
    secret = tiny_video(outside / "secret.mp4")
    root = tmp_path / "outputs"
    real = tiny_video(new_output_path(root, "mine", 1, now=NOON))
    (real.parent / "link.mp4").symlink_to(secret)
    (root / "2025-01-01").symlink_to(outside, target_is_directory=True)
    assert [i.path for i in list_outputs(root)] == [real]


# ---- choosing the outputs folder ---------------------------------------------------------------------------

def test_a_new_folder_or_one_the_app_made_is_accepted(tmp_path):
    from wan_app.outputs import check_outputs_dir
    assert check_outputs_dir(tmp_path / "new") == tmp_path / "new"
    day = new_output_path(tmp_path / "outs", "x", 1, now=NOON)
    tiny_video(day, {"app": "wan-studio"})
    (tmp_path / "outs" / ".gradio").mkdir()
    assert check_outputs_dir(tmp_path / "outs") == (tmp_path / "outs").resolve()


@pytest.mark.parametrize("where, words", [
    (lambda t: "/", "root of a drive"),
    (lambda t: os.path.expanduser("~"), "home folder"),
    (lambda t: "/etc", "system folder"),
    (lambda t: "/usr/share/wan", "system folder"),
    (lambda t: "/var/lib", "system folder"),
    (lambda t: "/tmp", "temp folder"),
])
def test_a_folder_whose_serving_would_expose_the_machine_is_refused(tmp_path, where, words):
    from wan_app.outputs import check_outputs_dir
    with pytest.raises(UserError) as e:
        check_outputs_dir(where(tmp_path))
    assert e.value.field == "outputs_dir" and words in e.value.problem


def test_a_folder_holding_home_folders_is_refused(tmp_path, monkeypatch):
    from wan_app.outputs import check_outputs_dir
    monkeypatch.setenv("HOME", str(tmp_path / "home" / "alice"))
    (tmp_path / "home" / "alice").mkdir(parents=True)
    with pytest.raises(UserError, match="holding home folders"):
        check_outputs_dir(tmp_path / "home")
    assert check_outputs_dir(tmp_path / "home" / "alice" / "videos")      # inside a home is fine


def test_a_symlink_to_a_refused_folder_is_refused_too(tmp_path):
    from wan_app.outputs import check_outputs_dir
    (tmp_path / "outs").symlink_to("/etc")
    with pytest.raises(UserError, match="system folder"):
        check_outputs_dir(tmp_path / "outs")


@pytest.mark.parametrize("outs", ["models", "models/sub", "."])
def test_a_models_folder_is_never_the_outputs_folder(tmp_path, outs):
    from wan_app.outputs import check_outputs_dir
    (tmp_path / "models").mkdir()
    with pytest.raises(UserError) as e:
        check_outputs_dir(tmp_path / outs, models_dirs=[tmp_path / "models"])
    assert "models folder" in e.value.problem


def test_an_existing_folder_of_other_files_is_refused_naming_some(tmp_path):
    from wan_app.outputs import check_outputs_dir
    (tmp_path / "docs").mkdir()
    for n in ("thesis.pdf", "notes.txt", ".ssh", "b.png", "c.png"):
        (tmp_path / "docs" / n).write_text("x")
    with pytest.raises(UserError) as e:
        check_outputs_dir(tmp_path / "docs")
    assert ".ssh" in e.value.problem and "2 more" in e.value.problem


# ---- cleaning up after crashes and uploads ------------------------------------------------------------------

def test_clean_stale_removes_old_partials_and_old_uploads_only(tmp_path):
    from wan_app.outputs import clean_stale
    video = tiny_video(new_output_path(tmp_path, "x", 1, now=NOON))
    day = video.parent
    old_partial = day / ".x.mp4.0a1b2c3d.partial"
    new_partial = day / ".y.mp4.0a1b2c3d.partial"
    upload = tmp_path / ".gradio" / "abc123" / "clip.mp4"
    fresh_upload = tmp_path / ".gradio" / "def456" / "now.png"
    for p in (old_partial, new_partial, upload, fresh_upload):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("keep")
    (tmp_path / ".gradio" / "link").symlink_to(outside)
    t = time.time()
    week = t - 7 * 24 * 3600
    for p in (old_partial, upload):
        os.utime(p, (week, week))
    os.utime(tmp_path / ".gradio" / "link", (week, week), follow_symlinks=False)
    deleted = clean_stale(tmp_path, now=t)
    assert sorted(deleted) == sorted([old_partial, upload, tmp_path / ".gradio" / "link"])
    assert new_partial.exists() and fresh_upload.exists() and video.exists() and outside.read_text() == "keep"
    assert not (tmp_path / ".gradio" / "abc123").exists()          # emptied folders go too
