"""Fetch a model's missing files from the Hugging Face Hub into the ComfyUI-style models folder."""
from __future__ import annotations

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
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / ".download"
        try:
            got = Path(hf_hub_download(d.repo, d.filename, local_dir=staging))
        except Exception as e:  # connection refused, DNS, 404, gated repo: all end in "do it by hand"
            raise _manual(spec, models_dir, todo[i:], f"{type(e).__name__}: {str(e)[:200]}") from None
        os.replace(got, target)           # same filesystem: atomic, and the file appears only when complete
        written.append(target)
    shutil.rmtree(target.parent / ".download", ignore_errors=True)
    return written
