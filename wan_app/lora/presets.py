"""Few-step presets: a distillation LoRA plus the sampling settings its authors publish.

Sources (read in their repositories; docs/LORA.md quotes the values):
- LightX2V: ModelTC/LightX2V `configs/distill/wan21/wan_t2v_distill_lora_4step_cfg.json` and
  `configs/distill/wan22/wan_moe_t2v_distill_lora.json` (infer_steps 4, enable_cfg false, sample_shift 5,
  denoising_step_list [1000, 750, 500, 250], boundary_step_index 2, the LoRA paths in lora_configs);
  the solvers are `lightx2v/models/schedulers/wan/step_distill/scheduler.py`: Wan2.1's
  WanStepDistillScheduler predicts x0 and re-noises it to the next σ with fresh noise (what ComfyUI
  calls the LCM sampler); Wan2.2's Wan22StepDistillScheduler steps x + (σ_next − σ)·v (Euler).
- Wan2.2-Lightning: github.com/ModelTC/Wan2.2-Lightning (read in its copy yliuls/Wan2.2-Lightning) `wan/configs/wan_t2v_A14B.py` (sample_shift 5.0,
  sample_steps 4, boundary 0.875, sample_guide_scale (1.0, 1.0)), `generate.py` (--sample_solver
  default "euler": "Please use euler solver because it's used in distillation"), README (the
  lightx2v/Wan2.2-Lightning repo and its Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1 folder).
No published LoRA from these authors exists for Wan2.1 1.3B or TI2V 5B (Lightning's README lists
"Wan2.2-TI2V-5B-4steps" as not done), and none with 8 steps for the T2V models: no preset for those.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .find import find_loras, lora_dirs


@dataclass(frozen=True)
class PresetFile:
    expert: str          # "only" | "high" | "low"
    repo: str            # Hugging Face repo
    filename: str        # path inside the repo
    dest: str            # path under <models folder>/loras/
    approx_gb: float     # rank-64 shapes in bf16, computed (not read from the hub)

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/blob/main/{self.filename}"


@dataclass(frozen=True)
class Preset:
    id: str
    name: str
    model_ids: tuple[str, ...]
    steps: int
    guidance: float               # CFG 1 = one transformer forward per step
    guidance_2: float | None      # A14B low-noise expert
    shift: float
    solver: str                   # "euler" | "lcm" (x0, then re-noised to the next σ with fresh noise)
    boundary: float | None        # A14B: t >= boundary·1000 runs the high-noise expert
    switch_step: int | None       # A14B: the authors' split as a step index (equal to what boundary gives)
    files: tuple[PresetFile, ...]
    strength: float = 1.0
    source: str = ""

    def installed(self, models_dirs) -> dict[str, Path]:
        """expert -> the file found under a loras/ folder (by its dest path, else by its file name)."""
        found = {}
        roots = lora_dirs(models_dirs)
        names = {f.name: f.path for f in find_loras(models_dirs) if f.problem is None}
        for pf in self.files:
            hit = next((r / pf.dest for r in roots if (r / pf.dest).is_file()), None)
            if hit is None and Path(pf.dest).name in names and Path(pf.dest).parent == Path("."):
                hit = names[Path(pf.dest).name]
            if hit is not None:
                found[pf.expert] = hit
        return found

    def missing(self, models_dirs) -> list[PresetFile]:
        have = self.installed(models_dirs)
        return [pf for pf in self.files if pf.expert not in have]

    def require(self, models_dirs) -> dict[str, Path]:
        """The files, or one UserError naming each missing file, where it goes and where to get it."""
        todo = self.missing(models_dirs)
        if todo:
            raise self.missing_error(todo, list(models_dirs)[0] if models_dirs else Path("models"))
        return self.installed(models_dirs)

    def missing_error(self, todo: list[PresetFile], models_dir: Path, why: str = "") -> UserError:
        where = Path(models_dir) / "loras"
        return UserError("preset", f"{self.name} needs " + "; ".join(f"{pf.dest} ({pf.approx_gb:g} GB)" for pf in todo)
                         + " in a loras/ folder" + (f" ({why})" if why else ""),
                         "download " + "; ".join(f"{pf.url} -> {where / pf.dest}" for pf in todo)
                         + " (or let the app download it when online)")


_LX21 = "lightx2v/Wan2.1-Distill-Loras"
_LX22 = "lightx2v/Wan2.2-Distill-Loras"
_LIGHTNING = "lightx2v/Wan2.2-Lightning"
_SEKO = "Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1"
_GB_14B_R64 = 0.61   # 40 blocks × (8·(5120+5120) + 2·(5120+13824)) × 64 × 2 bytes

PRESETS: dict[str, Preset] = {p.id: p for p in [
    Preset("lightx2v-4step-wan2.1-t2v-14b", "LightX2V 4 steps", ("wan2.1-t2v-14b",), steps=4, guidance=1.0,
           guidance_2=None, shift=5.0, solver="lcm", boundary=None, switch_step=None,
           files=(PresetFile("only", _LX21, "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors",
                             "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors", _GB_14B_R64),),
           source="ModelTC/LightX2V configs/distill/wan21/wan_t2v_distill_lora_4step_cfg.json; "
                  "WanStepDistillScheduler"),
    Preset("lightx2v-4step-wan2.2-t2v-a14b", "LightX2V 4 steps", ("wan2.2-t2v-a14b",), steps=4, guidance=1.0,
           guidance_2=1.0, shift=5.0, solver="euler", boundary=0.875, switch_step=2,
           files=(PresetFile("high", _LX22, "wan2.2_t2v_A14b_high_noise_lora_rank64_lightx2v_4step_1217.safetensors",
                             "wan2.2_t2v_A14b_high_noise_lora_rank64_lightx2v_4step_1217.safetensors", _GB_14B_R64),
                  PresetFile("low", _LX22, "wan2.2_t2v_A14b_low_noise_lora_rank64_lightx2v_4step_1217.safetensors",
                             "wan2.2_t2v_A14b_low_noise_lora_rank64_lightx2v_4step_1217.safetensors", _GB_14B_R64)),
           source="ModelTC/LightX2V configs/distill/wan22/wan_moe_t2v_distill_lora.json; Wan22StepDistillScheduler"),
    Preset("lightning-4step-wan2.2-t2v-a14b", "Lightning 4 steps", ("wan2.2-t2v-a14b",), steps=4, guidance=1.0,
           guidance_2=1.0, shift=5.0, solver="euler", boundary=0.875, switch_step=2,
           files=(PresetFile("high", _LIGHTNING, f"{_SEKO}/high_noise_model.safetensors",
                             f"{_SEKO}/high_noise_model.safetensors", _GB_14B_R64),
                  PresetFile("low", _LIGHTNING, f"{_SEKO}/low_noise_model.safetensors",
                             f"{_SEKO}/low_noise_model.safetensors", _GB_14B_R64)),
           source="github.com/ModelTC/Wan2.2-Lightning wan/configs/wan_t2v_A14B.py, generate.py, README"),
]}


def presets_for(model_id: str) -> list[Preset]:
    return [p for p in PRESETS.values() if model_id in p.model_ids]


def get(preset: str, model_id: str) -> Preset:
    """By id, or by name for this model ('Lightning 4 steps'); UserError naming what exists."""
    for p in PRESETS.values():
        if preset == p.id or (preset.lower() == p.name.lower() and model_id in p.model_ids):
            if model_id not in p.model_ids:
                raise UserError("preset", f"{p.name} ({p.id}) is for {', '.join(p.model_ids)}, not {model_id}",
                                _offer(model_id))
            return p
    raise UserError("preset", f"unknown preset {preset!r} for {model_id}", _offer(model_id))


def _offer(model_id: str) -> str:
    names = [f"{p.name} ({p.id})" for p in presets_for(model_id)]
    return "choose one of: " + ", ".join(names) if names else "this model has no few-step preset"


def download(preset: Preset, models_dir: Path, progress: Callable[[str, int, int], None] | None = None) -> list[Path]:
    """Fetch the preset's missing files into models_dir/loras/<dest> through huggingface_hub; offline or
    on any hub error, the UserError of Preset.require (each file, its URL and its folder)."""
    from ..checkpoints.download import _offline
    todo = preset.missing([models_dir])
    if not todo:
        return []
    if _offline():
        raise preset.missing_error(todo, models_dir, "this app is offline (HF_HUB_OFFLINE is set)")
    from huggingface_hub import hf_hub_download
    written = []
    for i, pf in enumerate(todo):
        if progress:
            progress(Path(pf.dest).name, i, len(todo))
        target = Path(models_dir) / "loras" / pf.dest
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(models_dir) / "loras" / ".download"
        try:
            got = Path(hf_hub_download(pf.repo, pf.filename, local_dir=staging))
        except Exception as e:  # connection refused, DNS, 404, gated repo: the by-hand message
            raise preset.missing_error(todo[i:], models_dir, f"{type(e).__name__}: {str(e)[:200]}") from None
        os.replace(got, target)   # the file appears only when complete
        written.append(target)
    shutil.rmtree(Path(models_dir) / "loras" / ".download", ignore_errors=True)
    return written


def apply(preset: Preset, req, models_dirs):
    """`req` with the preset's sampling settings where the request left them unset (what a person typed
    wins) and the preset's LoRA files added at its strength; UserError naming each missing file."""
    from dataclasses import replace
    files = preset.require(models_dirs)
    filled = {name: getattr(preset, name) for name in ("steps", "guidance", "guidance_2", "shift", "boundary")
              if getattr(req, name) is None and getattr(preset, name) is not None}
    if req.solver in (None, "unipc"):      # unipc is the request's default, not a choice to keep
        filled["solver"] = preset.solver
    loras = list(req.loras) + [{"file": str(files[pf.expert]), "strength": preset.strength, "strength_low": None}
                               for pf in preset.files]
    return replace(req, loras=loras, **filled)
