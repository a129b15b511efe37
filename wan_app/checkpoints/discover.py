"""Find weights in model folders and say, per catalog model, what is there and what is missing.

Only headers are read (safetensors JSON; `.pth` through a lazy mmap), so scanning 50 GB of models takes
well under a second per file. A ComfyUI models folder (diffusion_models/, text_encoders/, vae/), the
official Wan-AI folders and diffusers folders (model_index.json) all work as they are. Odd entries
(see survey.py) and files that are not Wan weights each get a problem line; they never end the scan.

`scan(dirs)` reads every header; `scan_cached(dirs)` lists and stats the folders and reads only the
headers of files that changed since the last call, so a Generate does not re-read a folder of LoRAs.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import catalog
from ..catalog import ModelSpec
from ..errors import UserError
from .headers import read_header
from .identify import Identity, identify, unsupported_reason

from .survey import Survey, survey


@dataclass
class FoundFile:
    path: Path                                   # the file, or the folder (tokenizer) / index (shards)
    kind: str                                    # dit | text_encoder | vae | clip_vision | tokenizer | diffusers | unknown
    layout: str = ""                             # diffusers | official | comfyui
    dtype: str = ""                              # fp32 | bf16 | fp16 | fp8 | fp8_scaled
    expert: str | None = None                    # A14B: "high" | "low" (from the folder or the file name)
    problem: str | None = None
    ident: Identity | None = None
    paths: list[Path] = field(default_factory=list)   # the files to read (shards)
    nbytes: int = 0
    unsupported: str | None = None               # a Wan DiT no catalog model has: its shape, in words
    variant: str | None = None                   # Wan2.1 I2V: "480p" | "720p" (from the folder or the file name)

    @property
    def arch(self):
        return self.ident.arch if self.ident else None

    def describe(self) -> dict:
        d = {"path": str(self.path), "kind": self.kind, "layout": self.layout, "dtype": self.dtype}
        if self.expert:
            d["expert"] = self.expert
        if self.problem:
            d["problem"] = self.problem
        return d


@dataclass
class ModelStatus:
    spec: ModelSpec
    runnable: bool
    found: dict[str, str]            # component -> path
    missing: list[str]               # sentences: which file, where to put it


@dataclass
class ModelFiles:
    spec: ModelSpec
    transformer: FoundFile                      # the only expert, or A14B's high-noise one
    transformer_2: FoundFile | None
    text_encoder: FoundFile
    tokenizer: FoundFile                        # a tokenizer folder, or the umT5 file carrying spiece_model
    vae: FoundFile
    clip: FoundFile | None = None               # the CLIP vision encoder of Wan2.1 I2V / FLF2V

    @property
    def dit_dtype(self) -> str:
        """How the DiT is stored on disk (the planner keeps fp8 files in fp8)."""
        return self.transformer.dtype

    def key(self) -> tuple:
        """Identity of what would be loaded: paths, sizes and mtimes, so a replaced file reloads."""
        parts = [self.transformer, self.transformer_2, self.text_encoder, self.tokenizer, self.vae, self.clip]
        out = []
        for f in parts:
            if f is None:
                continue
            for p in (f.paths or [f.path]):
                try:
                    st = Path(p).stat()
                    out.append((str(p), st.st_size, st.st_mtime_ns))
                except OSError:
                    out.append((str(p), -1, -1))
        return tuple(out)

    def sources(self) -> dict[str, str]:
        s = {"transformer": str(self.transformer.path), "text_encoder": str(self.text_encoder.path),
             "tokenizer": str(self.tokenizer.path), "vae": str(self.vae.path)}
        if self.transformer_2:
            s["transformer_2"] = str(self.transformer_2.path)
        if self.clip:
            s["clip"] = str(self.clip.path)
        return s

    def describe(self) -> dict:
        parts = {"transformer": self.transformer, "transformer_2": self.transformer_2,
                 "text_encoder": self.text_encoder, "tokenizer": self.tokenizer, "vae": self.vae, "clip": self.clip}
        return {"model_id": self.spec.id, "model": self.spec.name,
                **{k: f.describe() for k, f in parts.items() if f is not None}}


def _expert(path: Path) -> str | None:
    name = path.name.lower()
    parents = [p.name.lower() for p in path.parents][:2]
    if "high_noise" in name or "high_noise_model" in parents:
        return "high"
    if "low_noise" in name or "low_noise_model" in parents:
        return "low"
    if parents and parents[0] == "transformer_2":
        return "low"
    if parents and parents[0] == "transformer" and (path.parent.parent / "transformer_2").is_dir():
        return "high"
    return None


def _variant(path: Path) -> str | None:
    """Wan2.1 I2V 480P or 720P: the same tensors, told apart only by the name of the file or its folders
    (wan2.1_i2v_480p_14B_*.safetensors, Wan2.1-I2V-14B-720P/, Wan2.1-I2V-14B-480P-Diffusers/transformer/)."""
    for name in [path.name] + [p.name for p in path.parents][:2]:
        for v in ("480p", "720p"):
            if v in name.lower():
                return v
    return None


def _first_last(ident: Identity) -> bool:
    """FLF2V: img_emb has a position table for two images (first and last frame)."""
    return "pos_embed_seq_len" in ident.extra


def _fits(ident: Identity) -> list[ModelSpec]:
    return catalog.specs_for_dit(ident.arch, ident.has_img_emb, _first_last(ident))


def _layout(ident: Identity, path: Path) -> str:
    if ident.naming == "diffusers" or (ident.naming == "hf" and (path.parent / "config.json").exists()):
        return "diffusers"
    if ident.prefixed or ident.dtype in ("fp8", "fp8_scaled") or ident.naming == "hf" or ident.has_spiece:
        return "comfyui"
    if path.suffix == ".safetensors" and ident.kind != "dit" or ident.dtype in ("fp16", "bf16") and ident.kind == "dit":
        return "comfyui"       # official-named single files in half precision are ComfyUI's repackaging
    return "official"


def identify_file(paths: list[Path], shown: Path | None = None) -> FoundFile:
    shown = shown or paths[0]
    infos, problem = {}, None
    for p in paths:
        try:
            infos.update(read_header(p))
        except UserError as e:
            problem = str(e)
            infos.update(getattr(e, "infos", {}))
            if not infos:
                return FoundFile(shown, "unknown", problem=problem, paths=list(paths))
    ident = identify(infos)
    found = FoundFile(shown, ident.kind, _layout(ident, shown), ident.dtype, None, problem, ident, list(paths),
                      sum(t.nbytes for t in infos.values()))
    if ident.kind == "unknown" and not problem:
        found.problem = (f"{shown}: {ident.problem}" if ident.problem else
                         f"{shown}: no Wan tensors found (not a Wan DiT, umT5 text encoder or Wan VAE) — "
                         "remove it from the models folder or ignore this line")
    if ident.kind == "dit":
        found.expert = _expert(shown)
        found.variant = _variant(shown)
        found.unsupported = unsupported_reason(ident, bool(_fits(ident)))
        if found.unsupported and not problem:
            found.problem = found.unsupported
    return found


def scan(dirs: list[Path]) -> "Inventory":
    """Every models folder walked and every header read, now (the Rescan button)."""
    return _inventory(dirs, survey([Path(d) for d in dirs]), {})


def _inventory(dirs, sv: Survey, known: dict) -> "Inventory":
    """Build the Inventory of a survey; `known` maps an entry's (paths, stamp) to a FoundFile identified
    before, and is filled with what is identified now."""
    files: list[FoundFile] = []
    roots = [Path(d).expanduser() for d in dirs]
    for e in sv.entries:
        if _in_loras(e.shown, roots):
            continue             # LoRAs are wan_app.lora.find's (each would be an 'unknown' file here)
        if e.kind == "weights":
            key = (e.shown, e.paths, e.stamp)
            f = known.get(key)
            if f is None:
                f = known[key] = identify_file(list(e.paths), e.shown)
            elif f.ident is not None:
                # expert and layout also depend on the folders around the file (transformer_2/, config.json)
                f = replace(f, layout=_layout(f.ident, f.path),
                            expert=_expert(f.path) if f.kind == "dit" else None)
            files.append(f)
        elif e.kind == "diffusers":
            files.append(FoundFile(e.shown, "diffusers", "diffusers"))
        elif e.kind == "tokenizer" and not e.problem and _clip_text_tokenizer(e.shown):
            # the official I2V folders carry CLIP's text tokenizer (xlm-roberta-large/), which this app never uses
            files.append(FoundFile(e.shown, "clip_tokenizer", "official"))
        elif e.kind == "tokenizer":
            files.append(FoundFile(e.shown, "tokenizer", "diffusers" if e.shown.name == "tokenizer" else "official",
                                   problem=e.problem, nbytes=e.vocab_bytes))
        else:
            files.append(FoundFile(e.shown, "unknown", problem=e.problem))
    return Inventory(files, Path(dirs[0]).expanduser() if dirs else None, list(sv.folder_problems))


class InventoryCache:
    """The last Inventory per list of folders, reused while a survey of those folders (names, sizes,
    mtimes, inodes) is unchanged; when something changed, only new or changed files are read again.

    A survey is one scandir per folder and one stat per entry: milliseconds for a ComfyUI folder with a
    thousand files, against a header read (and for .pth a zip parse) per file for a full scan."""

    def __init__(self):
        self._lock = threading.Lock()
        # dirs -> (fingerprint, inventory, {(shown, paths, stamp): identified file})
        self._last: dict[tuple, tuple[tuple, Inventory, dict]] = {}

    def get(self, dirs: list[Path], refresh: bool = False) -> "Inventory":
        dkey = tuple(str(Path(d).expanduser()) for d in dirs)
        sv = survey([Path(d) for d in dirs])
        fp = sv.fingerprint()
        with self._lock:
            last = self._last.get(dkey)
        if last is not None and last[0] == fp and not refresh:
            return last[1]
        known = {} if refresh or last is None else dict(last[2])
        inv = _inventory(dirs, sv, known)
        live = {(e.shown, e.paths, e.stamp) for e in sv.entries if e.kind == "weights"}
        with self._lock:     # only files still there are remembered: the cache stays the size of the folders
            self._last[dkey] = (fp, inv, {k: v for k, v in known.items() if k in live})
        return inv

    def clear(self) -> None:
        with self._lock:
            self._last.clear()


_CACHE = InventoryCache()


def scan_cached(dirs: list[Path], refresh: bool = False) -> "Inventory":
    """`scan(dirs)`, but the same Inventory as last time when nothing in those folders changed (see
    InventoryCache). refresh=True reads every header again, like `scan`."""
    return _CACHE.get(dirs, refresh=refresh)


def _in_loras(path: Path, roots: list[Path]) -> bool:
    """Inside a `loras/` folder of a models folder (ComfyUI's models/loras), at any depth."""
    for root in roots:
        try:
            rel = Path(path).relative_to(root)
        except ValueError:
            continue
        if any(part.lower() == "loras" for part in rel.parts[:-1]):
            return True
    return False


def _clip_text_tokenizer(folder: Path) -> bool:
    """XLM-RoBERTa's tokenizer (official Wan2.1 I2V folders: xlm-roberta-large/, sentencepiece.bpe.model),
    not umT5's (spiece.model)."""
    if "xlm-roberta" in folder.name.lower():
        return True
    if (folder / "sentencepiece.bpe.model").is_file() and not (folder / "spiece.model").is_file():
        return True
    try:
        cfg = folder / "tokenizer_config.json"
        if cfg.is_file() and cfg.stat().st_size < 1_000_000:     # a regular file: a FIFO would block the read
            import json
            return str(json.loads(cfg.read_text()).get("tokenizer_class", "")).startswith("XLMRoberta")
    except (OSError, ValueError, AttributeError):
        pass
    return False


def _closeness(a: Path, b: Path) -> int:
    return len(os.path.commonpath([str(Path(a).resolve()), str(Path(b).resolve())]))


def _where(spec: ModelSpec, subdir: str, fallback: str, expert: str | None = None) -> str:
    names = [d.filename.rsplit("/", 1)[-1] for d in spec.downloads if d.subdir == subdir
             and (expert is None or f"{expert}_noise" in d.filename)]
    return f"{' or '.join(names) or fallback} into <models>/{subdir}/"


TINY_VAE_MAX_BASE = 32     # real Wan VAEs start at 96 (2.1) or 160 (2.2) channels
TINY_TOKENIZER_MAX_BYTES = 1_000_000   # umT5: tokenizer.json ~16 MB, spiece.model 4.5 MB; tiny: 5 KB, 240 KB
TINY_CLIP_MAX_LAYERS = 12   # real CLIP vision towers have 12 (ViT-B) to 48 (ViT-bigG) blocks; the tiny one 3


def _tiny_vae(f: FoundFile) -> bool:
    return f.ident.extra.get("base_dim", 96) < TINY_VAE_MAX_BASE


def _tiny_clip(f: FoundFile) -> bool:
    return f.ident.extra["layers"] < TINY_CLIP_MAX_LAYERS


class Inventory:
    def __init__(self, files: list[FoundFile], root: Path | None = None, folder_problems: list[str] | None = None):
        self.files = files
        self.root = root                  # the first models folder: where missing files should go
        # models folders that are missing, unreadable or not folders, one sentence each
        self.folder_problems: list[str] = list(folder_problems or [])

    def _here(self, sentence: str) -> str:
        return sentence.replace("<models>", str(self.root)) if self.root else sentence

    def of_kind(self, kind: str) -> list[FoundFile]:
        return [f for f in self.files if f.kind == kind]

    def problems(self) -> list[str]:
        """Every problem line: the folders first, then each file that is skipped."""
        return self.folder_problems + [f.problem for f in self.files if f.problem]

    def unsupported(self) -> list[FoundFile]:
        """Wan DiTs that were found but match no model of the catalog (e.g. image-to-video)."""
        return [f for f in self.files if f.unsupported]

    # -- matching -------------------------------------------------------------------------------
    def _dits(self, spec: ModelSpec, expert: str | None) -> list[FoundFile]:
        out = []
        for f in self.of_kind("dit"):
            if spec not in _fits(f.ident) or (spec.variant and f.variant not in (None, spec.variant)):
                continue
            if (spec.experts == 2 and f.expert == expert) or (spec.experts == 1 and f.expert is None):
                out.append(f)
        return out

    def _pick(self, spec: ModelSpec) -> tuple[dict, list[str], list[str]]:
        """(chosen files, missing sentences, problems with files that are there but unusable)."""
        chosen: dict[str, FoundFile] = {}
        missing: list[str] = []
        broken: list[str] = []
        roles = [("transformer", "high"), ("transformer_2", "low")] if spec.experts == 2 else [("transformer", None)]
        for role, expert in roles:
            cands = self._dits(spec, expert)
            good = [f for f in cands if not f.problem]
            broken += [f.problem for f in cands if f.problem]
            if good:
                chosen[role] = good[0]
            else:
                # a DiT of this model's size that is another kind of model: say it was found, and what it is
                missing += [f"Found {f.path}, but it is a {f.unsupported}." for f in self.unsupported()
                            if f.arch.dim == spec.arch.dim and f.arch.num_layers == spec.arch.num_layers]
                if expert:   # an expert of this model whose name does not say which one (no other model takes it)
                    missing += [f"Found {f.path}: it is shaped like {spec.name}'s experts, but neither its name nor "
                                "its folder says which one (put high_noise or low_noise in the file name)."
                                for f in self.of_kind("dit") if f.expert is None and not f.problem
                                and spec in _fits(f.ident) and not any(s.experts == 1 for s in _fits(f.ident))
                                and role == "transformer"]
                what = f"the {expert}-noise expert of {spec.name}" if expert else f"the {spec.name} diffusion model"
                fix = ("run `python -m wan_app.tiny <models>` to write the tiny test models" if spec.tiny else
                       f"put {_where(spec, 'diffusion_models', 'its file', expert)} (or a diffusers folder: {spec.diffusers_repo})")
                missing.append(f"Missing {what}: {fix}.")
        anchor = next(iter(chosen.values())).path if chosen else None
        near = (lambda fs: sorted(fs, key=lambda f: -_closeness(f.path, anchor))) if anchor else (lambda fs: fs)

        # without a DiT to read it from, the catalog says how wide the text encoder must be
        text_dim = chosen["transformer"].ident.text_dim if "transformer" in chosen else spec.text_dim
        tes = [f for f in self.of_kind("text_encoder")]
        broken += [f.problem for f in tes if f.problem]
        tes = [f for f in tes if not f.problem]
        fit = near([f for f in tes if text_dim is None or f.ident.d_model == text_dim])
        if fit:
            chosen["text_encoder"] = fit[0]
        else:
            if "transformer" in chosen:   # a width to complain about only when the DiT says what it needs
                for f in tes:
                    broken.append(f"Text encoder {f.path} has width {f.ident.d_model}, but {spec.name} needs "
                                  f"{text_dim}: use the umT5-xxl encoder that belongs to this model")
            missing.append(f"Missing the umT5-xxl text encoder: put {_where(spec, 'text_encoders', 'umt5_xxl_fp16.safetensors')} "
                           "(it carries its tokenizer inside).")

        vaes = self.of_kind("vae")
        broken += [f.problem for f in vaes if f.problem]
        vaes = [f for f in vaes if not f.problem]
        # a tiny demo VAE has the real z_dim; its base width (8, not 96/160) keeps it to tiny models
        vaes = [f for f in vaes if _tiny_vae(f) == spec.tiny]
        fit = near([f for f in vaes if f.ident.z_dim == spec.z_dim])
        if fit:
            chosen["vae"] = fit[0]
        else:
            for f in vaes:                  # all of the other kind here (z_dim), said as such
                kind = "Wan2.2" if f.ident.z_dim == 48 else "Wan2.1"
                broken.append(f"VAE {f.path} is the {kind} VAE ({f.ident.z_dim} latent channels), but {spec.name} "
                              f"needs the {spec.vae.capitalize()} VAE ({spec.z_dim} channels)")
            vae_file = "Wan2.2_VAE.pth / wan2.2_vae.safetensors" if spec.vae == "wan2.2" else "Wan2.1_VAE.pth / wan_2.1_vae.safetensors"
            missing.append(f"Missing the {spec.vae.capitalize()} VAE: put {_where(spec, 'vae', vae_file)}.")

        if spec.clip:
            self._pick_clip(spec, chosen, missing, broken, near)

        # a tiny test tokenizer (64 pieces) would turn a real prompt into garbage ids, and vice versa
        toks = near([f for f in self.of_kind("tokenizer") if (f.nbytes < TINY_TOKENIZER_MAX_BYTES) == spec.tiny
                     and not f.problem])
        te = chosen.get("text_encoder")
        if te is not None and te.ident.has_spiece:
            chosen["tokenizer"] = te           # the tokenizer travels inside ComfyUI's umT5 files
        elif toks:
            chosen["tokenizer"] = toks[0]
        elif te is not None:   # (with no text encoder, the umT5 file suggested above brings the tokenizer)
            missing.append("Missing the umT5 tokenizer: put the google/umt5-xxl tokenizer folder (tokenizer.json, "
                           "tokenizer_config.json) under <models>/ (e.g. <models>/google/umt5-xxl/), or use ComfyUI's "
                           "umt5_xxl_*.safetensors, which carries it inside.")
        return chosen, [self._here(m) for m in missing], broken

    def _pick_clip(self, spec: ModelSpec, chosen: dict, missing: list[str], broken: list[str], near) -> None:
        """The CLIP vision encoder whose width is the one the DiT's img_emb takes (1280: ViT-H/14)."""
        clips = self.of_kind("clip_vision")
        broken += [f.problem for f in clips if f.problem]
        clips = [f for f in clips if not f.problem and _tiny_clip(f) == spec.tiny]
        dit = chosen.get("transformer")
        want = dit.ident.extra.get("image_dim") if dit is not None else None
        fit = near([f for f in clips if want is None or f.ident.extra["width"] == want])
        if fit:
            chosen["clip"] = fit[0]
            return
        for f in clips:
            broken.append(f"CLIP vision encoder {f.path} has width {f.ident.extra['width']}, but {spec.name} needs "
                          f"{want} (CLIP ViT-H/14)")
        missing.append(f"Missing the CLIP vision encoder (ViT-H/14) of {spec.name}: put "
                       f"{_where(spec, 'clip_vision', 'clip_vision_h.safetensors')} (or the official "
                       "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth next to the model's files).")

    # -- public ---------------------------------------------------------------------------------
    def status(self) -> list[ModelStatus]:
        out = []
        for spec in catalog.MODELS.values():
            chosen, missing, broken = self._pick(spec)
            out.append(ModelStatus(spec, not missing, {k: str(f.path) for k, f in chosen.items()},
                                   missing + [f"Unusable: {b}" for b in broken if missing]))
        return out

    def runnable_ids(self) -> list[str]:
        return [s.spec.id for s in self.status() if s.runnable]

    def resolve(self, model_id: str) -> ModelFiles:
        spec = catalog.get(model_id)
        chosen, missing, broken = self._pick(spec)
        if missing:
            broken += [f.problem for f in self.of_kind("unknown") if f.problem and "no Wan tensors" not in f.problem]
            detail = " ".join(missing + [f"Unusable: {b}." for b in broken])
            raise UserError("model", f"{spec.name} cannot run yet. {detail}",
                            f"put the files where it says (or `python app.py download --model {spec.id}`, or "
                            "Settings → Models in the web app), then rescan")
        return ModelFiles(spec, chosen["transformer"], chosen.get("transformer_2"), chosen["text_encoder"],
                          chosen["tokenizer"], chosen["vae"], chosen.get("clip"))
