"""The engine: request → plan → load → encode → sample → decode → write, reported as events.

Shaped like diffusers' WanPipeline (check_inputs → encode_prompt → prepare_latents → denoise → decode)
but owning the loop, because the product needs what the pipeline does not give: the official σ
schedule, a preview and an ETA every step, the live A14B switch with weight moves, cancel between
steps without decoding a half-done latent, block swap, and a re-plan after a CUDA OOM.
The building blocks are public so wan_app.longvideo can drive them window by window.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from . import __version__, events, outputs, planner, sampling
from .catalog import ModelSpec
from .checkpoints import ModelFiles, build_text_encoder, load_components, load_transformer, scan
from .errors import Cancelled, UserError
from .hardware import Hardware, detect
from .media import write_mp4
from .memory import apply_plan
from .plan_types import Overrides, Plan
from .preview import latent_to_rgb
from .request import Request, resolve

log = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_EMBED_CACHE_SIZE = 32


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass
class Prepared:
    """Everything decided before heavy work: the complete request, its model, files and plan."""
    request: Request
    spec: ModelSpec
    files: ModelFiles
    plan: Plan


class Engine:
    def __init__(self, models_dirs: list[str | Path], outputs_dir: str | Path,
                 hardware: Hardware | None = None, overrides: Overrides | None = None):
        self.models_dirs = [Path(d) for d in models_dirs]
        self.outputs_dir = Path(outputs_dir)
        self.hardware = hardware or detect()
        self.overrides = overrides or Overrides()
        self._inventory = None
        self._components = None          # (key, Components)
        self._placement = None           # (key, Placement)
        self._embeds: OrderedDict = OrderedDict()
        self._decode_seconds: dict[tuple, float] = {}      # last decode time per VAE, latent shape, tiling
        self._reload_text_encoder: Callable = lambda: None
        self._keep_text_encoder = True
        self._lock = threading.Lock()
        # Called as hook(step_index, expert) before each step; tests inject faults (e.g. an OOM) here.
        self.step_hooks: list[Callable[[int, str], None]] = []

    # ---- inputs -----------------------------------------------------------------------------
    def inventory(self, refresh: bool = False):
        if self._inventory is None or refresh:
            self._inventory = scan(self.models_dirs)
        return self._inventory

    def check_inputs(self, request: Request, refresh: bool = True) -> Prepared:
        """Validate everything a run needs, touching only file headers. Raises UserError."""
        req, spec = resolve(request)
        files = self.inventory(refresh=refresh).resolve(spec.id)
        plan = planner.plan(self.hardware, spec, req.width, req.height, req.frames, self.overrides,
                            weights_on_disk=files.dit_dtype)
        planner.require_runnable(plan)     # a model or frame count that cannot fit is refused here
        return Prepared(req, spec, files, plan)

    # ---- the whole run ----------------------------------------------------------------------
    def run(self, request: Request, cancel: threading.Event | None = None,
            out_path: Path | None = None) -> Iterator[events.Event]:
        """Generate one video. Never raises for expected failures: they arrive as Failed events."""
        t_start = time.perf_counter()
        with self.busy():
            try:
                prep = self.check_inputs(request)
                path = Path(out_path) if out_path else outputs.new_output_path(
                    outputs.ensure_writable(self.outputs_dir), prep.request.prompt, prep.request.seed)
                outputs.ensure_writable(path.parent)
                yield events.PlanReady(prep.plan, list(prep.plan.reasons))
                for attempt in range(2):
                    try:
                        frames, meta = yield from self.generate_frames(prep, cancel)
                        break
                    except Exception as exc:  # noqa: BLE001 - only OOM is retried, the rest re-raised
                        if not is_oom(exc) or attempt == 1:
                            raise
                        if not (yield from self.replan_after_oom(prep)):
                            raise
                yield events.Progress("write", message="writing mp4")
                meta["seconds"] = round(time.perf_counter() - t_start, 2)
                write_mp4(frames, path, prep.request.fps, meta)
                yield events.Finished(path, meta, meta["seconds"])
            except UserError as e:
                yield events.Failed(f"{e.field}: {e.problem}", e.fix)
            except Cancelled:
                yield events.Cancelled()
            except Exception as e:  # noqa: BLE001 - the UI must get a message, not a dead stream
                log.exception("run failed")
                if is_oom(e):
                    yield events.Failed("Out of GPU memory, even after re-planning.",
                                        "lower the size or frame count, or force more block swap in Settings")
                else:
                    yield events.Failed(f"{type(e).__name__}: {e}", "see the console log for details")

    def generate_frames(self, prep: Prepared, cancel=None):
        """Load → encode → sample → decode for one clip. A generator of events whose return value
        is (frames uint8 [F,H,W,3], metadata)."""
        req, spec = prep.request, prep.spec
        comps, placement = yield from self.load(prep)
        yield events.Progress("encode", message="encoding the prompt")
        cond, uncond = self.encode_prompt(comps, placement, req.prompt, req.negative_prompt)
        latents = self.prepare_latents(spec, req)
        schedule, latents = yield from self.denoise(prep, comps, placement, latents, cond, uncond, cancel)
        yield events.Progress("decode", message="decoding with the VAE")
        placement.before_decode()
        frames = self.decode(comps, latents)
        meta = self.metadata(prep, schedule, placement)
        return frames, meta

    # ---- building blocks --------------------------------------------------------------------
    def load(self, prep: Prepared):
        """Load (or reuse) the model components and apply the plan to them."""
        plan = prep.plan
        comp_key = (prep.files.key(), plan.compute_dtype)
        place_key = (comp_key, plan.device, plan.weight_dtype, plan.blocks_swapped, plan.attention_backend,
                     plan.vae_tiling, plan.text_encoder_device, plan.experts_resident)
        if self._placement and self._placement[0] == place_key:
            return self._components[1], self._placement[1]
        self.unload(keep_components=bool(self._components and self._components[0] == comp_key
                                          and plan.weight_dtype != "fp8"))
        if self._components is None:
            yield events.Progress("load", message=f"loading {prep.spec.name}")
            self._components = (comp_key, load_components(
                prep.files, dtype=TORCH_DTYPES[plan.compute_dtype], experts=plan.experts_resident,
                text_encoder_dtype=self._text_encoder_dtype(plan), fp8=plan.weight_dtype == "fp8",
                text_encoder_fp8=plan.text_encoder_dtype == "fp8"))
        comps = self._components[1]
        notices: list[str] = []
        placement = apply_plan(plan, comps, notify=notices.append,
                               load_expert=lambda which: load_transformer(
                                   prep.files, which, dtype=TORCH_DTYPES[plan.compute_dtype],
                                   fp8=plan.weight_dtype == "fp8"))
        for n in notices:
            yield events.Notice(n)
        self._placement = (place_key, placement)
        self._reload_text_encoder = lambda: build_text_encoder(prep.files.text_encoder,
                                                               self._text_encoder_dtype(plan),
                                                               fp8=plan.text_encoder_dtype == "fp8")
        self._keep_text_encoder = plan.text_encoder_kept
        return comps, placement

    @staticmethod
    def _text_encoder_dtype(plan: Plan) -> torch.dtype:
        """umT5's dtype; in an fp8 plan, that of the parts not stored in fp8 (embeddings, norms, wo)."""
        return TORCH_DTYPES.get(plan.text_encoder_dtype, TORCH_DTYPES[plan.compute_dtype])

    def unload(self, keep_components: bool = False) -> None:
        if self._placement:
            self._placement[1].release()
            self._placement = None
        if not keep_components:
            self._components = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @contextmanager
    def busy(self):
        """One job at a time on this engine (the GPU); long-video jobs hold it for all their windows."""
        with self._lock:
            yield

    def replan_after_oom(self, prep: Prepared):
        """After a CUDA OOM: free everything, ask the planner for a safer plan (more swap, tiling, text
        encoder to CPU) and put it in `prep`, telling the user what changed. A generator of events that
        returns False when nothing is left to give; the caller retries once."""
        req = prep.request
        new_plan = planner.replan_after_oom(prep.plan, self.hardware, prep.spec, req.width, req.height,
                                            req.frames)
        self.unload(keep_components=new_plan is not None and new_plan.weight_dtype == prep.plan.weight_dtype
                    and new_plan.weight_dtype != "fp8")
        if new_plan is None:
            return False
        yield events.Notice("Ran out of GPU memory; retrying once with a safer plan: "
                            + "; ".join(r for r in new_plan.reasons if r not in prep.plan.reasons))
        prep.plan = new_plan
        yield events.PlanReady(new_plan, list(new_plan.reasons))
        return True

    @torch.no_grad()
    def encode_prompt(self, comps, placement, prompt: str, negative_prompt: str):
        """umT5 embeddings trimmed to the real tokens, zero-padded to 512 (the padding is attended:
        hand-made unpadded embeddings give a different video). Cached per text."""
        out = []
        for text in (prompt, negative_prompt):
            key = (comps.sources.get("text_encoder"), text)
            if key not in self._embeds:
                if comps.text_encoder is None:      # dropped after the last prompt to save RAM
                    comps.text_encoder = self._reload_text_encoder()
                self._embeds[key] = self._encode_text(comps, placement, text)
                while len(self._embeds) > _EMBED_CACHE_SIZE:
                    self._embeds.popitem(last=False)
            self._embeds.move_to_end(key)
            out.append(self._embeds[key])
        if self._keep_text_encoder:
            placement.text_encoder_done()
        else:
            placement.drop_text_encoder()
        return out[0], out[1]

    def _encode_text(self, comps, placement, text: str) -> torch.Tensor:
        text_len = comps.spec.text_len
        # The official tokenizer wrapper cleans whitespace before tokenizing (clean='whitespace').
        text = " ".join(text.split())
        tok = comps.tokenizer([text], padding="max_length", max_length=text_len, truncation=True,
                              add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        device = placement.text_encoder_device()
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        hidden = comps.text_encoder(ids, mask).last_hidden_state
        n = int(mask.gt(0).sum())
        emb = torch.zeros(1, text_len, hidden.shape[-1], dtype=hidden.dtype)
        emb[0, :n] = hidden[0, :n].to("cpu")
        return emb

    @staticmethod
    def prepare_latents(spec: ModelSpec, req: Request) -> torch.Tensor:
        """Gaussian noise from a CPU generator, so a seed gives the same video on any device."""
        shape = (1, *spec.latent_shape(req.frames, req.width, req.height))
        g = torch.Generator("cpu").manual_seed(int(req.seed))
        return torch.randn(shape, generator=g, dtype=torch.float32)

    @torch.no_grad()
    def denoise(self, prep: Prepared, comps, placement, latents: torch.Tensor, cond: torch.Tensor,
                uncond: torch.Tensor, cancel: threading.Event | None = None,
                inject: Callable[[int, float, torch.Tensor], torch.Tensor] | None = None,
                window: int | None = None, condition: torch.Tensor | None = None):
        """The denoising loop. Yields events; returns (schedule, final latents).

        `inject(step, sigma, latents) -> latents` lets long video put the overlap latents back, noised
        to each step's σ (how T2V models continue a clip). `condition` (clean latent frames the clip
        starts with) is Wan2.2 TI2V's image conditioning, as diffusers' WanImageToVideoPipeline does it
        with expand_timesteps: the model sees those frames clean with timestep 0 on their tokens, and
        they are written back at the end."""
        req, spec, plan = prep.request, prep.spec, prep.plan
        device = torch.device(plan.device)
        dtype = TORCH_DTYPES[plan.compute_dtype]
        schedule, solver = sampling.make_solver(req.solver, req.steps, req.shift, device=device)
        x = latents.to(device)
        if condition is not None:
            condition = condition.to(device, x.dtype)
            n_cond = condition.shape[2]
            keep = torch.ones(x.shape[2:], device=device)
            keep[:n_cond] = 0
            token_keep = keep[:, ::2, ::2].flatten()[None]   # patch (1, 2, 2): one token per 2×2 latents
        cond, uncond = cond.to(device, dtype), uncond.to(device, dtype)
        # plan.cfg_batched: cond and uncond as one batch of 2, so swapped blocks cross the bus once a step
        both = torch.cat([cond, uncond]) if plan.cfg_batched else None
        expert = None
        decode_eta = self._decode_seconds.get(self._decode_key(comps, x), 0.0)
        t0 = time.perf_counter()
        n = schedule.steps
        for i, t in enumerate(schedule.timesteps):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            want = sampling.expert_for(t, req.boundary)
            if want != expert:
                seconds = placement.activate(want)
                if expert is not None:
                    yield events.ExpertSwitch(i, expert, want, seconds, window=window)
                expert = want
            for hook in self.step_hooks:
                hook(i, want)
            sigma = float(schedule.sigmas[i])
            if inject is not None:
                x = inject(i, sigma, x)
            model = placement.transformer(want)
            scale = req.guidance_2 if want == "low" else req.guidance
            x_model, t_model = x, t.to(device)
            if condition is not None:
                x_model = torch.cat([condition, x[:, :, n_cond:]], dim=2)
                t_model = token_keep * t_model
            v = sampling.cfg(*self._velocities(model, x_model.to(dtype), t_model, cond, uncond, both), scale)
            # a preview every step: the linear latent→RGB map costs milliseconds
            x0 = sampling.predicted_clean(x_model, v, sigma)
            if condition is not None:
                x0[:, :, :n_cond] = condition
            yield events.Preview(i + 1, n, latent_to_rgb(x0, spec.vae), expert=self._expert_label(want),
                                 window=window)
            x = solver.step(v, t, x)
            elapsed = time.perf_counter() - t0
            # ETA: the steps left, plus the VAE decode as long as it took last time at this size (on a
            # consumer GPU decoding can take longer than sampling; unknown until measured once)
            yield events.Progress("sample", i + 1, n, eta_s=elapsed / (i + 1) * (n - i - 1) + decode_eta,
                                  message=f"step {i + 1}/{n}", window=window)
        if inject is not None:
            x = inject(n, 0.0, x)
        if condition is not None:
            x = torch.cat([condition, x[:, :, n_cond:]], dim=2)
        return schedule, x.float()

    @staticmethod
    def _velocities(model, x, t, cond, uncond, both=None):
        """(v_cond, v_uncond): two forwards, or one batch-2 forward when `both` = cat([cond, uncond])."""
        if both is not None:
            t2 = t.expand(2) if t.ndim == 0 else t.expand(2, -1)        # per-token timesteps are [1, seq]
            v = model(hidden_states=torch.cat([x, x]), timestep=t2, encoder_hidden_states=both,
                      return_dict=False)[0]
            return v[:1], v[1:]
        tt = t.expand(x.shape[0]) if t.ndim == 0 else t
        return (model(hidden_states=x, timestep=tt, encoder_hidden_states=cond, return_dict=False)[0],
                model(hidden_states=x, timestep=tt, encoder_hidden_states=uncond, return_dict=False)[0])

    @staticmethod
    def _expert_label(which: str) -> str | None:
        return None if which == "only" else which

    @torch.no_grad()
    def decode(self, comps, latents: torch.Tensor) -> np.ndarray:
        """VAE decode of z·std + mean (the sampler's latents are normalised), clamp to [−1, 1]."""
        vae = comps.vae
        t0 = time.perf_counter()
        z = self.denormalize(vae, latents)
        video = vae.decode(z.to(vae.device, vae.dtype), return_dict=False)[0]
        video = video.float().clamp(-1, 1)[0]                     # [3, F, H, W]
        frames = ((video + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
        self._decode_seconds[self._decode_key(comps, latents)] = time.perf_counter() - t0
        return frames

    @staticmethod
    def _decode_key(comps, latents: torch.Tensor) -> tuple:
        return comps.sources.get("vae"), tuple(latents.shape[1:]), bool(getattr(comps.vae, "use_tiling", False))

    @staticmethod
    def denormalize(vae, latents: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        return latents.float().cpu() * std + mean

    @staticmethod
    def normalize(vae, z: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        return (z.float().cpu() - mean) / std

    @torch.no_grad()
    def encode_frames(self, comps, frames: np.ndarray) -> torch.Tensor:
        """uint8 [F,H,W,3] → normalised latent [1, z, f, h, w] (the mode of the posterior)."""
        vae = comps.vae
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        z = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mode()
        return self.normalize(vae, z)

    def metadata(self, prep: Prepared, schedule: sampling.Schedule, placement) -> dict:
        req = prep.request
        return {
            "app": "wan-studio", "version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": prep.spec.id, "model_name": prep.spec.name,
            "request": req.to_dict(),
            "frames": req.frames, "width": req.width, "height": req.height, "fps": req.fps,
            "timesteps": [int(t) for t in schedule.timesteps],
            "files": prep.files.describe(),
            "plan": prep.plan.to_dict(),
            "attention": placement.attention_backend,
        }
