"""Fetch a model's missing files from the Hugging Face Hub into the ComfyUI-style models folder."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable

from ..catalog import ModelSpec
from ..errors import UserError


def _target(models_dir: Path, d) -> Path:
    return Path(models_dir) / d.subdir / d.filename.rsplit("/", 1)[-1]


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def _manual(spec: ModelSpec, models_dir: Path, todo, why: str) -> UserError:
    lines = "; ".join(f"https://huggingface.co/{d.repo}/blob/main/{d.filename} -> {_target(models_dir, d).parent}/"
                      f" ({d.approx_gb:g} GB)" for d in todo)
    return UserError("download", f"cannot download {spec.name}: {why}",
                     f"download these files by hand and put each in the folder shown: {lines}")


def download_missing(spec: ModelSpec, models_dir: Path,
                     progress: Callable[[str, int, int], None] | None = None) -> list[Path]:
    """Download every file of `spec.downloads` not yet in models_dir/<subdir>/; returns the paths written.

    progress(filename, index, total) is called before each file. Offline (HF_HUB_OFFLINE or no connection)
    raises UserError listing each file and the folder it belongs in.
    """
    if spec.tiny or not spec.downloads:
        raise UserError("download", f"{spec.name} is not downloadable",
                        "run `python -m wan_app.tiny <models folder>` to write the tiny test models")
    todo = [d for d in spec.downloads if not _target(models_dir, d).exists()]
    if not todo:
        return []
    if _offline():
        raise _manual(spec, models_dir, todo, "this app is offline (HF_HUB_OFFLINE is set)")
    from huggingface_hub import hf_hub_download
    written = []
    for i, d in enumerate(todo):
        if progress:
            progress(d.filename.rsplit("/", 1)[-1], i, len(todo))
        target = _target(models_dir, d)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError("download", f"cannot write into {target.parent} ({e.strerror or type(e).__name__})",
                            "choose a models folder you can write to (Settings, or --models-dir)") from None
        staging = target.parent / ".download"
        try:
            got = Path(hf_hub_download(d.repo, d.filename, local_dir=staging))
            os.replace(got, target)       # same filesystem: atomic, and the file appears only when complete
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise _manual(spec, models_dir, todo[i:], f"{type(e).__name__}: {str(e)[:200]}") from None
            shutil.rmtree(staging, ignore_errors=True)      # the partial download is of no use
            raise UserError("download", f"the disk holding {models_dir} is full ({d.approx_gb:g} GB needed for "
                            f"{d.filename.rsplit('/', 1)[-1]})",
                            "free some space, or choose a models folder on a drive with room") from None
        except Exception as e:  # connection refused, DNS, 404, gated repo: all end in "do it by hand"
            raise _manual(spec, models_dir, todo[i:], f"{type(e).__name__}: {str(e)[:200]}") from None
        written.append(target)
    shutil.rmtree(target.parent / ".download", ignore_errors=True)
    return written
