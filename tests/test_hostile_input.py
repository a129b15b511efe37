"""Hostile and clumsy input (issue 13): every case is one line of data — what is done, and the one clear
outcome expected. Nothing may crash, hang, be lost or be exposed.

Outcomes:
- refused(field, words): one UserError naming `field`, its message containing `words`;
- skipped(words):        the models scan finishes, says `words` on a problem line of its own, and the
                         good tiny model beside the odd entry still runs;
- holds(check):          the action returns something `check` accepts (e.g. "the file is unchanged").
Every case runs under a time limit: a hang is a failure, not a stuck test run.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from wan_app import tiny
from wan_app.checkpoints import scan
from wan_app.errors import UserError

from .sparse_checkpoints import wan_dit_tensors, write_header_only

TIME_LIMIT_S = 60


# ------------------------------------------------------------------------------------------ outcomes

@dataclass
class Outcome:
    kind: str
    check: Callable
    words: str = ""


def refused(field: str, words: str = "") -> Outcome:
    def check(result):
        assert isinstance(result, UserError), f"expected a UserError, got {result!r}"
        assert result.field == field, f"field {result.field!r}, expected {field!r}: {result}"
        assert words in str(result), f"{words!r} not in {str(result)!r}"
    return Outcome("clear error", check, words)


def skipped(words: str) -> Outcome:
    def check(inv):
        assert not isinstance(inv, BaseException), f"the scan failed: {inv!r}"
        lines = inv.problems()
        assert any(words in line for line in lines), f"{words!r} in none of {lines}"
        assert tiny.T21 in inv.runnable_ids(), "one odd entry stopped a good model from running"
    return Outcome("skipped with its own line", check, words)


def holds(check: Callable, what: str = "") -> Outcome:
    def run(result):
        assert not isinstance(result, BaseException), f"failed: {result!r}"
        assert check(result), f"does not hold: {what or check}"
    return Outcome("handled", run, what)


@dataclass
class Case:
    name: str
    action: Callable          # (Env) -> result; a UserError raised is the result
    expect: Outcome

    def __str__(self):
        return self.name


class Env:
    """What an action gets: a scratch folder, monkeypatch, and the tiny models."""

    def __init__(self, tmp: Path, monkeypatch, tiny_root):
        self.tmp, self.mp, self.tiny_root = tmp, monkeypatch, tiny_root

    def models(self) -> Path:
        """A ComfyUI models folder with the tiny Wan2.1 model in it."""
        root = self.tmp / "models"
        if not root.exists():
            shutil.copytree(self.tiny_root["comfyui-fp16"].path, root)
        return root


# ------------------------------------------------------------------------------------------ models folder

def scan_with(make: Callable[[Path, Env], None]):
    """Put one odd entry into diffusion_models/ next to a good model, then scan."""
    def action(env: Env):
        root = env.models()
        make(root / "diffusion_models", env)
        return scan([root])
    return action


def header_file(name: str, header) -> Callable:
    def make(d: Path, env):
        raw = header if isinstance(header, bytes) else json.dumps(header).encode()
        (d / name).write_bytes(struct.pack("<Q", len(raw)) + raw)
    return make


def fifo(d: Path, env):
    os.mkfifo(d / "x.safetensors")


def unix_socket(d: Path, env):
    # bound by a relative name: a socket path is limited to 108 bytes, and pytest-xdist's tmp paths are long
    s = socket.socket(socket.AF_UNIX)
    here = os.getcwd()
    os.chdir(d)
    try:
        s.bind("sock.safetensors")
    finally:
        os.chdir(here)
        s.close()


def unreadable(d: Path, env):
    p = d / "locked.safetensors"
    shutil.copy(next(d.iterdir()), p)
    p.chmod(0)
    if os.geteuid() == 0:        # root ignores permission bits: refuse the open as the kernel would
        import wan_app.checkpoints.headers as headers
        real_open = os.open
        env.mp.setattr(headers.os, "open", lambda f, *a, **k: _eacces(f) if Path(f).name == p.name
                       else real_open(f, *a, **k))


def _eacces(f):
    raise PermissionError(errno.EACCES, "Permission denied", str(f))


def sparse_header_claim(n: int) -> Callable:
    def make(d: Path, env):
        with open(d / "huge_header.safetensors", "wb") as f:
            f.write(struct.pack("<Q", n))
            f.truncate(8 + n)
    return make


def dit_file(name: str, **shape) -> Callable:
    def make(d: Path, env):
        write_header_only(d / name, wan_dit_tensors(**shape))
    return make


def tokenizer_fifo(d: Path, env):
    folder = d.parent / "google" / "umt5-xxl"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "tokenizer.json")


def unlistable_folder(d: Path, env):
    (d / "loras").mkdir()
    real = os.scandir
    env.mp.setattr("wan_app.checkpoints.survey.os.scandir",
                   lambda p: _eacces(p) if Path(p).name == "loras" else real(p))


def scan_dirs(*extra: Callable[[Env], Path]):
    """Scan the good models folder plus other --models-dir values."""
    def action(env: Env):
        return scan([env.models()] + [make(env) for make in extra])
    return action


def notes_file(env: Env) -> Path:
    p = env.tmp / "notes.txt"
    p.write_text("my notes")
    return p


# ------------------------------------------------------------------------------------------ videos and sidecars

def frames(n=5):
    return np.zeros((n, 16, 16, 3), np.uint8)


def write_video(name: str, meta=None, prepare: Callable[[Path], None] = lambda d: None):
    """Write a video to tmp/<name> after `prepare(tmp)`; returns the path or the UserError."""
    def action(env: Env):
        from wan_app.media import write_mp4
        prepare(env.tmp)
        return write_mp4(frames(), env.tmp / name, 16, meta if meta is not None else {"app": "wan-studio"})
    return action


def unchanged_after(action: Callable, path_of: Callable[[Env], Path]):
    """Make the file at path_of(env), run `action`; the result is (result, whether the file kept its
    bytes)."""
    def run(env: Env):
        before = path_of(env).read_bytes()
        try:
            result = action(env)
        except UserError as e:
            result = e
        return result, path_of(env).read_bytes() == before
    return run


def existing(make: Callable[[Path], Path]) -> Callable[[Env], Path]:
    """path_of for unchanged_after: the file `make(tmp)` writes, made once."""
    def path_of(env: Env) -> Path:
        if not hasattr(env, "made"):
            env.made = make(env.tmp)
        return env.made
    return path_of


def load_settings_of(path_of: Callable[[Env], Path]):
    def action(env: Env):
        from wan_app.settings import load_settings
        return load_settings(path_of(env))
    return action


def refused_and_kept(field: str, words: str) -> Outcome:
    inner = refused(field, words)

    def check(pair):
        result, kept = pair
        inner.check(result)
        assert kept, "the file was changed"
    return Outcome("clear error, nothing lost", check, words)


def settings_file(env: Env) -> Path:
    p = env.tmp / "settings.json"
    if not p.exists():
        from wan_app.settings import Settings, save_settings
        save_settings(Settings(outputs_dir="mine"), p)
    return p


def out_beside_settings(env: Env):
    from wan_app.media import write_mp4
    settings_file(env)
    return write_mp4(frames(), env.tmp / "settings.mp4", 16, {"app": "wan-studio"})


def fake_ffmpeg(message: str):
    """An ffmpeg that reads its input, writes part of a file and fails the way a full disk makes it fail."""
    def action(env: Env):
        from wan_app import media
        script = env.tmp / "ffmpeg"
        script.write_text("#!/bin/sh\ncat > /dev/null\nfor last; do :; done\n"
                          'printf partial > "${last#file:}"\n'
                          f"echo '{message}' >&2\nexit 1\n")
        script.chmod(0o755)
        env.mp.setattr(media, "ffmpeg_exe", lambda: str(script))
        out = env.tmp / "videos"
        try:
            media.write_mp4(frames(), out / "v.mp4", 16, {"app": "wan-studio"})
        except UserError as e:
            return e, sorted(p.name for p in out.iterdir())
        return None, sorted(p.name for p in out.iterdir())
    return action


def clear_and_no_litter(words: str) -> Outcome:
    def check(pair):
        err, left = pair
        refused("out", words).check(err)
        assert "[out#0" not in str(err) and "av_interleaved" not in str(err), "raw ffmpeg text in the message"
        assert left == [], f"left behind: {left}"
    return Outcome("clear error, nothing left", check, words)


def growing_over_foreign_parts(env: Env):
    from wan_app.media import GrowingVideo
    (env.tmp / "clip.parts").mkdir()
    (env.tmp / "clip.parts" / "thesis.tex").write_text("years of work")
    try:
        GrowingVideo(env.tmp / "clip.mp4", fps=16)
    except UserError as e:
        return e, (env.tmp / "clip.parts" / "thesis.tex").exists()
    return None, (env.tmp / "clip.parts" / "thesis.tex").exists()


def symlinked_sidecar(env: Env):
    from wan_app.media import read_metadata, write_mp4
    v = write_mp4(frames(), env.tmp / "v.mp4", 16, {"app": "wan-studio", "prompt": "cat"})
    (env.tmp / "secret.json").write_text('{"password": "hunter2"}')
    (env.tmp / "v.json").unlink()
    (env.tmp / "v.json").symlink_to(env.tmp / "secret.json")
    return read_metadata(v)


def huge_prompt_round_trip(env: Env):
    from wan_app.media import read_metadata, write_mp4
    meta = {"app": "wan-studio", "prompt": "猫" * 30_000 + "x" * 170_000}
    v = write_mp4(frames(), env.tmp / "big.mp4", 16, meta)
    (env.tmp / "big.json").unlink()
    return read_metadata(v) == meta


# ------------------------------------------------------------------------------------------ settings

def load_settings_at(make: Callable[[Path], Path]):
    def action(env: Env):
        from wan_app.settings import load_settings
        return load_settings(make(env.tmp))
    return action


def write(name: str, data: bytes | str):
    def make(d: Path) -> Path:
        p = d / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return p
    return make


def mkfifo_at(name: str):
    def make(d: Path) -> Path:
        os.mkfifo(d / name)
        return d / name
    return make


def defaults_with_notice(words: str) -> Outcome:
    def check(result):
        assert not isinstance(result, BaseException), f"failed: {result!r}"
        from wan_app.settings import Settings
        s, notice = result
        assert s == Settings() and notice and words in notice, notice
    return Outcome("defaults and a notice", check, words)


def edit_while_running(env: Env):
    from wan_app.settings import load_settings, save_settings
    p = settings_file(env)
    s, _ = load_settings(p)
    p.write_text(p.read_text().replace('"mine"', '"edited"'))
    s.last_request = {"model": "tiny-wan2.1-t2v", "prompt": "a cat"}
    save_settings(s, p)
    return load_settings(p)[0].outputs_dir


# ------------------------------------------------------------------------------------------ requests

def request(**kw):
    def action(env: Env):
        from wan_app.request import Request, resolve
        return resolve(Request(**{"model": "wan2.1-t2v-1.3b", "prompt": "a cat", **kw}))
    return action


def long_total(n):
    def action(env: Env):
        from wan_app.request import check_total_frames
        return check_total_frames(n)
    return action


# ------------------------------------------------------------------------------------------ outputs and jobs

def outputs_dir(where: Callable[[Env], object], models: bool = False):
    def action(env: Env):
        from wan_app.outputs import check_outputs_dir
        return check_outputs_dir(where(env), [env.models()] if models else [])
    return action


def listed(make: Callable[[Path], None]):
    def action(env: Env):
        from wan_app.media import write_mp4
        from wan_app.outputs import list_outputs
        root = env.tmp / "outputs"
        good = write_mp4(frames(), root / "2025-01-01" / "good.mp4", 16)
        make(root / "2025-01-01")
        return [i.path for i in list_outputs(root, with_metadata=False)] == [good]
    return action


def second_resume(env: Env):
    from wan_app.journal import lock_job
    video = env.tmp / "clip.mp4"
    with lock_job(video):
        with lock_job(video):
            return "ran twice"


def download_on_a_full_disk(env: Env):
    import huggingface_hub

    from wan_app import catalog
    from wan_app.checkpoints import download, download_missing
    env.mp.setattr(download, "_offline", lambda: False)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    env.mp.setattr(huggingface_hub, "hf_hub_download", full)
    return download_missing(catalog.get("wan2.1-t2v-1.3b"), env.tmp / "models")


# ------------------------------------------------------------------------------------------ the cases

NOTES = existing(write("notes.txt", "my notes"))
PACKAGE = existing(write("package.json", '{"name": "x"}'))

CASES = [
    # -- one odd file in a models folder never breaks the scan (issue 13: "One odd file breaks everything")
    Case("models: dangling symlink", scan_with(lambda d, e: (d / "gone.safetensors").symlink_to(d / "nowhere")), skipped("which does not exist")),
    Case("models: symlink loop", scan_with(lambda d, e: (d / "loop.safetensors").symlink_to(d / "loop.safetensors")), skipped("symlink loop")),
    Case("models: FIFO named x.safetensors", scan_with(fifo), skipped("is a FIFO")),
    Case("models: socket named .safetensors", scan_with(unix_socket), skipped("is a socket")),
    Case("models: symlink to /dev/zero", scan_with(lambda d, e: (d / "zero.safetensors").symlink_to("/dev/zero")), skipped("character device")),
    Case("models: unreadable file", scan_with(unreadable), skipped("permission denied")),
    Case("models: header entry without dtype", scan_with(header_file("nodtype.safetensors", {"w": {"shape": [1], "data_offsets": [0, 0]}})), skipped("has no dtype")),
    Case("models: header entry that is not a dict", scan_with(header_file("odd.safetensors", {"w": [1, 2]})), skipped("not a tensor description")),
    Case("models: header that is a JSON list", scan_with(header_file("list.safetensors", [1, 2])), skipped("not a JSON object")),
    Case("models: header not UTF-8", scan_with(header_file("bin.safetensors", b"\xff\xfe{}")), skipped("not valid safetensors JSON")),
    Case("models: header nested 100,000 deep", scan_with(header_file("deep.safetensors", b"[" * 100_000 + b"]" * 100_000)), skipped("not valid safetensors JSON")),
    Case("models: header offsets that do not match the shape", scan_with(header_file("size.safetensors", {"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 2]}})), skipped("says 2 bytes")),
    Case("models: header with a negative shape", scan_with(header_file("neg.safetensors", {"w": {"dtype": "F16", "shape": [-1], "data_offsets": [0, 0]}})), skipped("no valid shape")),
    Case("models: 3-byte file", scan_with(lambda d, e: (d / "short.safetensors").write_bytes(b"abc")), skipped("shorter than a safetensors header")),
    Case("models: header claiming 10^15 bytes", scan_with(lambda d, e: (d / "claim.safetensors").write_bytes(struct.pack("<Q", 10**15))), skipped("claims 1,000,000,000,000,000 bytes")),
    Case("models: 20 MB header (over the limit)", scan_with(sparse_header_claim(20 * 1024 * 1024)), skipped("more than the")),
    Case("models: garbage .pth", scan_with(lambda d, e: (d / "bad.pth").write_bytes(b"not a zip")), skipped("torch.load(weights_only=True) refused it")),
    Case("models: FIFO named x.pth", scan_with(lambda d, e: os.mkfifo(d / "x.pth")), skipped("is a FIFO")),
    Case("models: GGUF file", scan_with(lambda d, e: (d / "wan.gguf").write_bytes(b"GGUF")), skipped("GGUF")),
    Case("models: Wan DiT names with tensors missing", scan_with(lambda d, e: write_header_only(d / "partial.safetensors", {"head.modulation": ("F32", (1, 2, 8))})), skipped("do not fit together")),
    Case("models: I2V DiT of an unknown size (Fun 1.3B InP)", scan_with(dit_file("fun_inp.safetensors", dim=1536, ffn=8960, layers=30, in_ch=36, img_emb=True)), skipped("Wan DiT dim 1536, 30 layers, in_channels 36 — an image-to-video model")),
    Case("models: DiT of a shape no model has", scan_with(dit_file("odd.safetensors", dim=2048, ffn=8192, layers=24, in_ch=16)), skipped("not supported yet")),
    Case("models: FIFO tokenizer.json", scan_with(tokenizer_fifo), skipped("tokenizer folder")),
    Case("models: unlistable subfolder", scan_with(unlistable_folder), skipped("cannot be listed")),
    Case("models: folder symlink loop", scan_with(lambda d, e: (d / "loop").symlink_to(d.parent)), holds(lambda inv: tiny.T21 in inv.runnable_ids(), "the scan ends")),
    Case("models: --models-dir missing", scan_dirs(lambda e: e.tmp / "no_such_folder"), skipped("does not exist")),
    Case("models: --models-dir is a text file", scan_dirs(notes_file), skipped("is a file, not a folder")),
    Case("download: disk full", download_on_a_full_disk, refused("download", "is full")),

    # -- finished work is never lost (issue 13: "Data lost or work thrown away")
    Case("video: --out settings.mp4 beside settings.json", unchanged_after(out_beside_settings, settings_file), refused_and_kept("out", "not written by this app")),
    Case("video: --out X.mp4 beside the user's X.json", unchanged_after(write_video("notes.mp4"), existing(write("notes.json", '{"mine": true}'))), refused_and_kept("out", "not written by this app")),
    Case("video: --out X.mp4 where X.json is a symlink", write_video("l.mp4", prepare=lambda d: (d / "l.json").symlink_to(d / "elsewhere.json")), refused("out", "not written by this app")),
    Case("video: --out clip.json (the sidecar's own name)", write_video("clip.json"), refused("out", ".json name")),
    Case("video: a growing video over someone's clip.parts/", growing_over_foreign_parts, holds(lambda r: isinstance(r[0], UserError) and r[0].field == "out" and r[1], "refused, the folder kept")),
    Case("video: metadata of a 200,000-character prompt", huge_prompt_round_trip, holds(bool, "the tag reads back equal")),
    Case("video: disk full while encoding", fake_ffmpeg("[out#0/mp4] Error writing trailer: No space left on device"), clear_and_no_litter("the disk is full")),
    Case("video: ffmpeg fails for another reason", fake_ffmpeg("av_interleaved_write_frame(): Invalid argument"), clear_and_no_litter("failed writing v.mp4")),
    Case("video: a sidecar symlinked to a secret", symlinked_sidecar, holds(lambda m: m == {"app": "wan-studio", "prompt": "cat"}, "the link is not read")),
    Case("video: check_output_path of a folder", lambda e: __import__("wan_app.media", fromlist=["x"]).check_output_path(e.tmp), refused("out", "does not end in .mp4")),

    # -- settings (issue 13: editing undone, notes.txt replaced, nested file stops the start, BOM)
    Case("settings: --settings notes.txt", unchanged_after(load_settings_of(NOTES), NOTES), refused_and_kept("settings", "not a settings file")),
    Case("settings: a JSON of something else (package.json)", unchanged_after(load_settings_of(PACKAGE), PACKAGE), refused_and_kept("settings", "none of the settings keys")),
    Case("settings: a JSON list", load_settings_at(write("settings.json", "[1, 2]")), refused("settings", "JSON list")),
    Case("settings: a folder", load_settings_at(lambda d: d), refused("settings", "is a folder")),
    Case("settings: a FIFO", load_settings_at(mkfifo_at("settings.json")), refused("settings", "not a regular file")),
    Case("settings: nested 100,000 deep", load_settings_at(write("settings.json", "[" * 100_000 + "]" * 100_000)), defaults_with_notice("nested too deeply")),
    Case("settings: nested 40 deep in a value", load_settings_at(write("settings.json", '{"models_dirs": ' + "[" * 40 + "]" * 40 + "}")), defaults_with_notice("nested more than")),
    Case("settings: 5 MB file", load_settings_at(write("settings.json", '{"outputs_dir": "' + "x" * 5_000_000 + '"}')), defaults_with_notice("settings files are a few KB")),
    Case("settings: not UTF-8", load_settings_at(write("settings.json", b"\xff\xfe\x00{")), defaults_with_notice("not UTF-8")),
    Case("settings: UTF-8 BOM", load_settings_at(write("settings.json", b'\xef\xbb\xbf{"outputs_dir": "vids"}')), holds(lambda r: r[0].outputs_dir == "vids" and r[1] is None, "read as JSON")),
    Case("settings: edited while the app runs", edit_while_running, holds(lambda v: v == "edited", "the edit survives a save")),

    # -- requests: what would fail late fails first (issue 13: steps 260, frames 2^62+1, NaN ...)
    Case("request: --steps 260 with UniPC", request(steps=260), refused("steps", "1 to 250")),
    Case("request: --steps 92 with UniPC at A14B's shift 12", request(model="wan2.2-t2v-a14b", steps=92), refused("steps", "1 to 91")),
    Case("request: --steps 1001 with Euler", request(steps=1001, solver="euler"), refused("steps", "1 to 1000")),
    Case("request: --frames 2^62+1", request(frames=2**62 + 1), refused("frames", "1 to 1025")),
    Case("request: --frames 100001 --no-windows", request(frames=100_001), refused("frames", "more than one clip")),
    Case("request: long video of 2^62+1 frames", long_total(2**62 + 1), refused("frames", "at most 1,000,000")),
    Case("request: long video of 0 frames", long_total(0), refused("frames", "positive")),
    Case("request: a 200,000-character prompt", request(prompt="x" * 200_000), refused("prompt", "at most 20,000")),
    Case("request: a 30,000-character CJK prompt", request(prompt="猫" * 30_000), refused("prompt", "at most 20,000")),
    Case("request: a 20,000-character negative prompt + 1", request(negative_prompt="x" * 20_001), refused("negative_prompt", "at most 20,000")),
    Case("request: a prompt that is not text", request(prompt=123), refused("prompt", "not text")),
    Case("request: a model id that is not text", request(model={"a": 1}), refused("model", "not a model id")),
    Case("request: guidance NaN", request(guidance=float("nan")), refused("guidance", "finite")),
    Case("request: shift inf", request(shift=float("inf")), refused("shift", "finite")),
    Case("request: shift 'abc'", request(shift="abc"), refused("shift", "not a number")),
    Case("request: boundary NaN (A14B)", request(model="wan2.2-t2v-a14b", boundary=float("nan")), refused("boundary", "finite")),
    Case("request: guidance_2 inf (A14B)", request(model="wan2.2-t2v-a14b", guidance_2=float("-inf")), refused("guidance_2", "finite")),
    Case("request: seed 1.5", request(seed=1.5), refused("seed", "whole number")),
    Case("request: seed NaN", request(seed=float("nan")), refused("seed", "whole number")),
    Case("request: fps NaN", request(fps=float("nan")), refused("fps", "whole number")),
    Case("request: fps inf", request(fps=float("inf")), refused("fps", "whole number")),
    Case("request: frames True", request(frames=True), refused("frames", "4n+1")),
    Case("request: width 10^9", request(width=10**9 // 16 * 16, height=480), refused("size", "position encoding")),

    # -- what may be served (issue 13: outputs folder /, ~, symlinks, unfinished videos)
    Case("outputs: /", outputs_dir(lambda e: "/"), refused("outputs_dir", "root of a drive")),
    Case("outputs: ~", outputs_dir(lambda e: "~"), refused("outputs_dir", "home folder")),
    Case("outputs: /etc", outputs_dir(lambda e: "/etc"), refused("outputs_dir", "system folder")),
    Case("outputs: a symlink to /etc", outputs_dir(lambda e: (e.tmp / "o").symlink_to("/etc") or e.tmp / "o"), refused("outputs_dir", "system folder")),
    Case("outputs: the models folder", outputs_dir(lambda e: e.models(), models=True), refused("outputs_dir", "models folder")),
    Case("outputs: a folder holding the models folder", outputs_dir(lambda e: e.tmp, models=True), refused("outputs_dir", "models folder")),
    Case("outputs: a folder of someone's files", outputs_dir(lambda e: notes_file(e).parent), refused("outputs_dir", "did not make")),
    Case("outputs: a symlinked mp4 is not listed", listed(lambda d: (d / "link.mp4").symlink_to("/etc/hostname")), holds(bool, "only the real video")),
    Case("outputs: an unfinished long video is not listed", listed(lambda d: (shutil.copy(d / "good.mp4", d / "long.mp4"), (d / "long.journal.json").write_text("{}"))), holds(bool, "only the finished video")),
    Case("outputs: a FIFO named x.mp4 is not listed", listed(lambda d: os.mkfifo(d / "x.mp4")), holds(bool, "only the real video")),

    # -- long-video jobs (issue 13: "Two extend --resume runs of one job are not locked")
    Case("resume: a second run of the same job", second_resume, refused("resume", "already running")),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_and_clumsy_input(case: Case, tmp_path, monkeypatch, tiny_root):
    env = Env(tmp_path, monkeypatch, tiny_root)
    box: dict = {}

    def run():
        try:
            box["result"] = case.action(env)
        except UserError as e:
            box["result"] = e
        except BaseException as e:       # a crash: reported as such below
            box["result"] = e

    # a daemon thread, so a case that hangs (a FIFO opened for reading) fails instead of stopping the run
    t = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    t.start()
    t.join(TIME_LIMIT_S)
    assert not t.is_alive(), f"hung for {TIME_LIMIT_S}s"
    result = box["result"]
    if isinstance(result, BaseException) and not isinstance(result, UserError):
        raise result                     # a crash, with its own traceback
    case.expect.check(result)
    assert time.monotonic() - start < TIME_LIMIT_S


def test_every_case_has_a_unique_name():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
