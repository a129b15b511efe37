"""Build diffusers / transformers modules from checkpoint files without a second copy in RAM.

Modules are created on the meta device (accelerate's init_empty_weights keeps buffers such as the RoPE
tables real) and filled with `load_state_dict(assign=True)` from safetensors tensors, which safetensors
backs by a private mmap of the file: a tensor already in the wanted dtype is never copied. Only tensors
that need a dtype change (or fp8 dequantization) get new memory, one tensor at a time.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..catalog import ModelSpec
from ..errors import UserError
from ..fp8 import fp8_shells
from . import convert
from .headers import load_pth
from .identify import COMFY_PREFIX

# Wan2.2 VAE normalisation (diffusers' Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json), kept as data because
# the official Wan2.2_VAE.pth carries none of it.
WAN22_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667]
WAN22_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744]


@dataclass
class Components:
    spec: ModelSpec
    transformer: object                 # WanTransformer3DModel: the only expert, or A14B's high-noise one
    transformer_2: object | None        # A14B low-noise expert
    vae: object                         # AutoencoderKLWan
    text_encoder: object                # transformers UMT5EncoderModel
    tokenizer: object                   # PreTrainedTokenizerBase
    sources: dict[str, str] = field(default_factory=dict)
    clip: object | None = None          # transformers CLIPVisionModel (Wan2.1 I2V / FLF2V), else None


def open_tensors(paths: list[Path]) -> dict[str, torch.Tensor]:
    """All tensors of one checkpoint (shards merged), mmap-backed, ComfyUI prefix stripped."""
    from safetensors import safe_open
    sd: dict[str, torch.Tensor] = {}
    for p in paths:
        if Path(p).suffix == ".safetensors":
            with safe_open(str(p), framework="pt") as f:
                mine = {k: f.get_tensor(k) for k in f.keys()}
            _populate(list(mine.values()))
            sd.update(mine)
        else:
            sd.update(load_pth(Path(p)))
    if any(k.startswith(COMFY_PREFIX) for k in sd):
        sd = {k.removeprefix(COMFY_PREFIX): v for k, v in sd.items()}
    return sd


_MADV_POPULATE_READ, _MADV_WILLNEED = 22, 3


def _populate(tensors: list[torch.Tensor]) -> None:
    """Map a file's pages in one call (Linux >= 5.14) instead of one page fault per 4 KB on first use.

    Measured on the full 1.3B checkpoint: page-faulting 2.8 GB lazily cost ~6 s on first touch, more than
    diffusers' whole load. The pages stay file-backed, so the kernel can still drop them under pressure.
    """
    import ctypes
    import mmap
    spans = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in tensors if t.numel()]
    if not spans or not sys.platform.startswith("linux"):
        return
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    lo -= lo % mmap.PAGESIZE
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_POPULATE_READ) != 0:
            libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_WILLNEED)   # older kernels
    except (OSError, AttributeError):
        pass


_MADV_DONTNEED = 4


def _span(t: torch.Tensor) -> tuple[int, int]:
    return t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()


def _release_converted(file_tensors: list[torch.Tensor], model) -> int:
    """Unmap the pages of file tensors the model no longer uses (it holds converted copies of them).

    One tensor kept from the file (a norm, the umT5 embedding) keeps the whole private mapping alive, and
    with it every page _populate mapped, so RssFile would show the whole file although the converted
    tensors' pages are never read again. MADV_DONTNEED takes them out of this mapping (they stay in the
    page cache, and a read would fault them back from the file: no page here was ever written, see
    tests/test_low_precision_loading.py). Returns the bytes released."""
    import ctypes
    import mmap
    if not sys.platform.startswith("linux"):
        return 0
    kept = sorted(_span(t) for t in list(model.parameters()) + list(model.buffers()) if t.numel())
    page, released = mmap.PAGESIZE, 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return 0
    for lo, hi in sorted({_span(t) for t in file_tensors if t.numel()}):
        for a, b in _minus(lo, hi, kept):
            a, b = -(-a // page) * page, b // page * page       # whole pages only: neighbours may be kept
            if b > a and libc.madvise(ctypes.c_void_p(a), ctypes.c_size_t(b - a), _MADV_DONTNEED) == 0:
                released += b - a
    return released


def _minus(lo: int, hi: int, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[lo, hi) minus the union of sorted `spans`."""
    out, at = [], lo
    for a, b in spans:
        if b <= at or a >= hi:
            continue
        if a > at:
            out.append((at, a))
        at = max(at, b)
    if at < hi:
        out.append((at, hi))
    return out


def _assign(model_cls, config: dict, sd: dict[str, torch.Tensor], source: str, from_config: bool = True,
            fp8_under=None, fp8_skip: tuple[str, ...] = ()):
    """Build on the meta device and assign the (mmap-backed) tensors. `fp8_under(model)` names the
    sub-module whose linears are stored as fp8 (see convert.keep_fp8)."""
    from accelerate import init_empty_weights
    with init_empty_weights():
        model = model_cls.from_config(config) if from_config else model_cls(config)
    if fp8_under is not None:
        fp8_shells(fp8_under(model), fp8_skip)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise UserError("checkpoint", f"{source} does not fit the model its shapes describe: {str(e)[:600]}",
                        "the file may be from an unsupported variant; use an official, ComfyUI or diffusers file") from None
    return model.eval().requires_grad_(False)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- DiT
def transformer_config(ident, head_dim: int) -> dict:
    """As diffusers' Wan configs have it; I2V with CLIP (img_emb): image_dim = the CLIP width, the image
    key/value projections take the DiT width (added_kv_proj_dim = dim), FLF2V adds the 2×257 position table."""
    a = ident.arch
    img = ident.has_img_emb
    return dict(patch_size=list(ident.extra.get("patch_size", (1, 2, 2))), num_attention_heads=a.dim // head_dim,
                attention_head_dim=head_dim, in_channels=a.in_channels, out_channels=a.out_channels,
                text_dim=ident.text_dim, freq_dim=ident.freq_dim, ffn_dim=a.ffn_dim, num_layers=a.num_layers,
                cross_attn_norm=ident.extra.get("cross_attn_norm", True), qk_norm="rms_norm_across_heads",
                eps=1e-6, image_dim=ident.extra.get("image_dim") if img else None,
                added_kv_proj_dim=a.dim if img else None,
                pos_embed_seq_len=ident.extra.get("pos_embed_seq_len") if img else None, rope_max_seq_len=1024)


# Plan names of the storage dtypes (wan_app.plan_types.DTYPES), so the engine can pass plan.weight_dtype.
STORAGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _storage(storage_dtype, compute: torch.dtype, fp8: bool) -> tuple[torch.dtype | None, bool]:
    """(dtype of the non-fp8 parameters or None for "all in `compute`, as before", fp8)."""
    if storage_dtype is None:
        return None, fp8
    if storage_dtype == "fp8":
        return compute, True
    if isinstance(storage_dtype, str):
        if storage_dtype not in STORAGE_DTYPES:
            raise UserError("weight_dtype", f"{storage_dtype!r} is not a storage dtype",
                            "use one of " + ", ".join([*STORAGE_DTYPES, "fp8"]))
        storage_dtype = STORAGE_DTYPES[storage_dtype]
    # fp8 storage keeps everything but the block linears in the compute dtype (as wan_app.memory does)
    return (compute if fp8 else storage_dtype), fp8


def param_dtype(name: str, storage: torch.dtype, keep_fp32) -> torch.dtype:
    """The dtype wan_app.memory._cast_params gives parameter `name` of a model stored in `storage`: its
    `_keep_in_fp32_modules` (substring match on the full name, as there) stay fp32. Loading in these
    dtypes makes apply_plan's cast a no-op, so no second copy of the model is ever made."""
    return torch.float32 if storage != torch.float32 and any(k in name for k in keep_fp32) else storage


def build_transformer(found, spec: ModelSpec, dtype: torch.dtype = torch.float32,
                      fp8: bool = False, storage_dtype: str | torch.dtype | None = None):
    """One DiT, built tensor by tensor in its storage dtype from the file's mmap.

    `dtype` is the compute dtype. `storage_dtype` is the plan's weight dtype ("fp32" / "bf16" / "fp16" /
    "fp8", or a torch dtype): parameters are created in it, `_keep_in_fp32_modules` in fp32, exactly as
    memory.apply_plan would cast them; a tensor already in its dtype stays memory-mapped. "fp8" (or
    fp8=True) keeps the block linears as fp8 + scale without ever dequantizing them as a whole, and
    the rest in `dtype`. storage_dtype=None builds every parameter in `dtype` (the older contract).
    """
    from diffusers import WanTransformer3DModel
    if found.dtype == "gguf":
        from .gguf import build_gguf_transformer
        return build_gguf_transformer(found.path, spec.arch.head_dim, dtype)
    storage, fp8 = _storage(storage_dtype, dtype, fp8)
    keep = list(WanTransformer3DModel._keep_in_fp32_modules or []) if storage is not None else []
    want = lambda k: param_dtype(k, storage if storage is not None else dtype, keep)  # noqa: E731
    raw = open_tensors(found.paths)
    file_tensors = list(raw.values())
    if found.ident.naming == "official":
        # renaming first (it reads no tensor) lets the dtype rule see the diffusers names it is written for
        raw = convert.dit_official_to_diffusers(raw)
    if fp8:
        sd = convert.keep_fp8(raw, lambda k: k.startswith("blocks."), want)
    else:
        sd = convert.dequantize(raw, want)
    del raw
    ident = found.ident
    ident.extra["cross_attn_norm"] = "blocks.0.norm2.weight" in sd
    model = _assign(WanTransformer3DModel, transformer_config(ident, spec.arch.head_dim), sd, str(found.path),
                    fp8_under=(lambda m: m.blocks) if fp8 else None)
    _release_converted(file_tensors, model)
    return model


def load_transformer(files, which: str = "only", dtype: torch.dtype = torch.float32,
                     fp8: bool = False, storage_dtype: str | torch.dtype | None = None):
    """One DiT: "only" / "high" -> files.transformer, "low" -> files.transformer_2 (A14B, one at a time).
    `dtype`: compute dtype; `storage_dtype`: the plan's weight dtype (see build_transformer)."""
    if which not in ("only", "high", "low"):
        raise UserError("which", f"'{which}' is not an expert", "use 'only', 'high' or 'low'")
    found = files.transformer_2 if which == "low" else files.transformer
    if found is None:
        raise UserError("which", f"{files.spec.name} has no '{which}' expert", "use 'only' or 'high'")
    return build_transformer(found, files.spec, dtype, fp8, storage_dtype)


# ---------------------------------------------------------------------------------------------- umT5
# UMT5 casts its hidden states to `wo`'s dtype before `wo` (transformers keeps `wo` in fp32 for that
# reason), so in fp8 storage `wo` is not fp8: it is dequantized into 16 bit (see _te_dtypes).
_TE_FP8_SKIP = ("wo",)
_SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def _te_dtypes(sd: dict[str, torch.Tensor], dtype: torch.dtype, fp8: bool):
    """Each umT5 tensor's dtype, for compute dtype `dtype`.

    - `wo` is fp32 under fp16 compute: T5's feed-forward output overflows fp16, so transformers keeps it
      there (UMT5PreTrainedModel._keep_in_fp32_modules), which assigning a state dict would bypass.
    - In fp8 storage under fp32 compute (a CPU), `wo` is bf16, as the planner counts it (16 bit: 2.0 GB,
      not 4.0 GB): only the wo matmul runs in bf16, as the official code runs all of umT5; the residual
      stream stays fp32.
    - In fp8 storage the 256k×4096 embedding keeps the file's 16-bit dtype: it stays memory-mapped
      (2.1 GB of clean file pages instead of a 4.2 GB fp32 copy on a CPU) and only the rows a prompt
      looks up are cast (see _cast_embedding_output).
    """
    wo = torch.float32 if dtype == torch.float16 else torch.bfloat16 if fp8 and dtype == torch.float32 else dtype

    def want(k: str) -> torch.dtype:
        if k.endswith(".DenseReluDense.wo.weight"):
            return wo
        if fp8 and k == "shared.weight" and sd[k].dtype in _SIXTEEN_BIT:
            return sd[k].dtype
        return dtype
    return want


def _cast_embedding_output(model, dtype: torch.dtype) -> None:
    """The encoder then runs in `dtype` although its embedding table is stored in another 16-bit dtype."""
    model.encoder.embed_tokens.register_forward_hook(lambda _m, _args, out: out.to(dtype))


def build_text_encoder(found, dtype: torch.dtype = torch.float32, fp8: bool = False):
    """umT5 in `dtype` (its compute dtype). fp8=True: the encoder blocks' linears (all but `wo`) stay
    fp8 + scale and memory-mapped, the embedding stays in the file's 16-bit dtype, memory-mapped too;
    `wo` is 16 bit (bf16, or fp32 under fp16 compute: _te_dtypes), the norms and position biases `dtype`."""
    from transformers import UMT5Config, UMT5EncoderModel
    sd = open_tensors(found.paths)
    file_tensors = list(sd.values())
    if found.ident.naming == "official":
        sd = convert.umt5_official_to_hf(sd)
    tied = sd.pop("encoder.embed_tokens.weight", None)     # tied to shared.weight: never convert it twice
    if tied is not None:
        sd.setdefault("shared.weight", tied)
    want = _te_dtypes(sd, dtype, fp8)
    if fp8:
        sd = convert.keep_fp8(sd, lambda k: k.startswith("encoder.block.") and "relative_attention_bias" not in k
                              and not k.endswith(tuple(f".{n}.weight" for n in _TE_FP8_SKIP)), want)
    else:
        sd = convert.dequantize(sd, want)
    sd = convert.umt5_hf_complete(sd)
    vocab, d_model = sd["shared.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.block."))
    buckets, heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
    known = _read_json(Path(found.path).parent / "config.json") if Path(found.path).is_file() else None
    config = UMT5Config(
        vocab_size=vocab, d_model=d_model, num_heads=heads, num_layers=layers,
        d_kv=sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // heads,
        d_ff=sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0],
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=(known or {}).get("relative_attention_max_distance", 128),
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, layer_norm_epsilon=1e-6)
    model = _assign(UMT5EncoderModel, config, sd, str(found.path), from_config=False,
                    fp8_under=(lambda m: m.encoder.block) if fp8 else None, fp8_skip=_TE_FP8_SKIP)
    model.encoder.embed_tokens.weight = model.shared.weight    # assign=True made two Parameters of one tensor
    if model.shared.weight.dtype != dtype:
        _cast_embedding_output(model, dtype)
    _release_converted(file_tensors, model)
    return model


# ---------------------------------------------------------------------------------------------- VAE
def vae_config(sd: dict[str, torch.Tensor], z_dim: int) -> dict:
    base = sd["encoder.conv_in.weight"].shape[0]
    mid = sd["encoder.mid_block.resnets.0.conv1.weight"].shape[0]
    res = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("decoder.up_blocks.0.resnets."))
    cfg = dict(base_dim=base, z_dim=z_dim, dim_mult=[1, 2, 4, mid // base], num_res_blocks=res - 1,
               attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    if z_dim == 48:   # Wan2.2: residual blocks, 2x2 patchify in front, 16x spatial
        cfg.update(decoder_base_dim=sd["decoder.conv_out.weight"].shape[1], is_residual=True, patch_size=2,
                   in_channels=12, out_channels=12, scale_factor_spatial=16, scale_factor_temporal=4,
                   latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD)
    return cfg


def build_vae(found, dtype: torch.dtype = torch.float32):
    from diffusers import AutoencoderKLWan
    sd = convert.dequantize(open_tensors(found.paths), dtype)
    z = found.ident.z_dim
    if found.ident.naming == "official":
        sd = (convert.vae22_official_to_diffusers if z == 48 else convert.vae21_official_to_diffusers)(sd)
    cfg = None
    if found.ident.naming == "diffusers":
        cfg = _read_json(Path(found.paths[0]).parent / "config.json")
    return _assign(AutoencoderKLWan, cfg or vae_config(sd, z), sd, str(found.path))


# ---------------------------------------------------------------------------------------------- tokenizer
def tokenizer_from_spm(model_bytes: bytes):
    """A T5 tokenizer from sentencepiece model bytes (ComfyUI keeps them in the umT5 file as `spiece_model`).

    transformers 5 converts a bare spiece.model only with protobuf installed; building the Unigram vocab from
    the sentencepiece processor needs nothing more and gives the same ids.
    """
    import sentencepiece as spm
    from transformers import T5Tokenizer
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _refuse_code(folder: Path) -> None:
    """A tokenizer folder may name Python to run (`auto_map`, with the .py files beside it); transformers then
    asks "run the custom code? [y/N]" and runs it on a yes. umT5 needs no code: refuse such a folder."""
    for name in ("tokenizer_config.json", "config.json"):
        path = folder / name
        cfg = _read_json(path) if path.is_file() else None
        if isinstance(cfg, dict) and "auto_map" in cfg:
            raise UserError("tokenizer", f"{path} asks to run Python code from the models folder (auto_map); "
                            "this app never runs code from a models folder",
                            "use the google/umt5-xxl tokenizer files (tokenizer.json, tokenizer_config.json), which "
                            "need none")


def load_tokenizer(found):
    if found.kind == "tokenizer":
        from transformers import AutoTokenizer
        folder = Path(found.path)
        _refuse_code(folder)
        try:
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        except Exception as e:
            if (folder / "spiece.model").exists():
                return tokenizer_from_spm((folder / "spiece.model").read_bytes())
            raise UserError("tokenizer", f"the tokenizer in {folder} cannot be read ({type(e).__name__}: {e})",
                            "put the google/umt5-xxl tokenizer files (tokenizer.json, tokenizer_config.json) there") from None
    return tokenizer_from_spm(read_spiece(found.paths))


def read_spiece(paths: list[Path]) -> bytes:
    """The sentencepiece bytes ComfyUI stores in its umT5 file (4.5 MB of a 6.7 GB file): that one
    tensor is read, nothing else of the file is touched."""
    from safetensors import safe_open
    for p in paths:
        if Path(p).suffix != ".safetensors":
            continue
        with safe_open(str(p), framework="pt") as f:
            key = next((k for k in f.keys() if k.removeprefix(COMFY_PREFIX) == "spiece_model"), None)
            if key is not None:
                return f.get_tensor(key).numpy().tobytes()
    raise UserError("tokenizer", f"{paths[0]} carries no tokenizer (no `spiece_model` tensor)",
                    "put the google/umt5-xxl tokenizer folder under the models folder")


# ---------------------------------------------------------------------------------------------- all
def load_components(files, dtype: torch.dtype = torch.float32, experts: str = "both",
                    text_encoder_dtype: torch.dtype | None = None, fp8: bool = False,
                    text_encoder_fp8: bool = False, storage_dtype: str | torch.dtype | None = None) -> Components:
    """All parts of a model. `dtype` is the compute dtype; `storage_dtype` the plan's weight dtype
    (plan.weight_dtype: the DiT is built in it, see build_transformer). `experts="one"` (A14B on a
    small-RAM machine) loads only the high-noise expert; the memory module loads the low-noise one from
    its mmap at the switch. The VAE is always float32, as in the official code (wan/modules/vae.py):
    its decode is where bf16 shows banding."""
    spec = files.spec
    dit = dict(dtype=dtype, fp8=fp8, storage_dtype=storage_dtype)
    transformer = load_transformer(files, "high" if spec.experts == 2 else "only", **dit)
    transformer_2 = load_transformer(files, "low", **dit) if spec.experts == 2 and experts == "both" else None
    # the CLIP encoder runs once per image before sampling, in fp32 as the VAE (the official code keeps it
    # in fp16 on a GPU, fp32 on a CPU); it is small (ViT-H/14: 0.63 B params)
    clip = getattr(files, "clip", None)
    if clip is not None:
        from .clip_vision import build_clip_vision
        clip = build_clip_vision(clip, torch.float32)
    return Components(spec=spec, transformer=transformer, transformer_2=transformer_2,
                      vae=build_vae(files.vae, torch.float32),
                      text_encoder=build_text_encoder(files.text_encoder, text_encoder_dtype or dtype,
                                                      fp8=text_encoder_fp8),
                      tokenizer=load_tokenizer(files.tokenizer), sources=files.sources(), clip=clip)
