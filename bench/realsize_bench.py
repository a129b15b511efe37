"""Real-size RAM check (issue 8): does the planner's RAM estimate hold for the real models on this machine?

It writes real-size checkpoints in ComfyUI single-file layouts, with the real tensor names, shapes and
dtypes (WAN_FACTS "What the real files contain") but no real weights: the safetensors header is written
and the data is left as holes of a sparse file (zeros), so 60+ GB of models take under 2 GB of disk. All-zero
DiT and umT5 weights make the DiT predict nothing, which is fine for measuring memory. Real bytes are
written where the run needs them: random weights in the two VAEs (1.7 GB of disk; a VAE of zeros decodes
a grey video, which the pipeline refuses), and the tokenizer inside the umT5 file: a valid sentencepiece
model, trained on generated text, padded to umT5's 256,000 pieces so it costs what the real one costs.

Then, one model at a time, it runs the whole CLI in a fresh process:

    python app.py generate --models-dir DIR --model M --prompt x --size 64x64 --frames 5 --steps N --seed 1

and samples the child's /proc/PID/status every 50 ms: peak RssAnon (must fit: it cannot be dropped), peak
RssFile (memory-mapped weights: clean pages the kernel may drop and re-read), RssShmem, and the peak of
their sum. The CLI's progress lines ("load:", "encode:", "sampling", "decode:") split the run into phases
(time and peak anonymous memory per phase). The prediction is the plan's `est_ram_gb` from the video's
JSON sidecar (or the "Estimated peak RAM" reason / the refusal when the planner refuses the run).

    .venv/bin/python bench/realsize_bench.py                  # all models, writes bench/results/realsize_bench.txt
    .venv/bin/python bench/realsize_bench.py --models wan2.1-t2v-1.3b
    .venv/bin/python bench/realsize_bench.py --repo /path/to/checkout   # run another checkout's app.py

The machine is shared: before each run it waits until /proc/meminfo MemAvailable is at least --min-free GB.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIB = 2 ** 30
GB = 1e9

# ---------------------------------------------------------------------------------------------------
# The real architectures (WAN_FACTS "Models"; umT5-xxl: google/umt5-xxl config.json; VAEs: diffusers'
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers and Wan2.2-TI2V-5B-Diffusers vae/config.json).
# ---------------------------------------------------------------------------------------------------
DIT = {
    "1.3b": dict(dim=1536, ffn=8960, layers=30, channels=16),
    "14b": dict(dim=5120, ffn=13824, layers=40, channels=16),
    "5b": dict(dim=3072, ffn=14336, layers=30, channels=48),
}
UMT5_XXL = dict(vocab=256384, d_model=4096, d_kv=64, d_ff=10240, layers=24, heads=64, buckets=32)
UMT5_SPM_PIECES = 256000          # google/umt5-xxl spiece.model; the embedding has 384 more rows
VAE = {
    "wan2.1": dict(base_dim=96, z_dim=16),
    "wan2.2": dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, patch_size=2,
                   in_channels=12, out_channels=12, scale_factor_spatial=16, scale_factor_temporal=4),
}
# Published sizes of the ComfyUI files (WAN_FACTS), to check the writer against.
REAL_FILE_BYTES = {"wan2.2_ti2v_5B_fp16.safetensors": 9_999_658_848,
                   "umt5_xxl_fp8_e4m3fn_scaled.safetensors": 6_735_906_897,
                   "wan2.2_vae.safetensors": 1_409_400_960}

ST_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "U8": 1}


# ---------------------------------------------------------------------------------------------------
# Tensor lists: name -> (safetensors dtype, shape), from the real modules built on the meta device
# ---------------------------------------------------------------------------------------------------
def _meta_state(build) -> dict:
    from accelerate import init_empty_weights
    with init_empty_weights(include_buffers=False):
        m = build()
    return dict(m.state_dict())


def dit_tensors(dim: int, ffn: int, layers: int, channels: int, layout: str) -> dict[str, tuple[str, tuple]]:
    """A Wan DiT with official names. layout: "comfy-fp16-prefixed" (1.3B: model.diffusion_model.,
    F16, patch_embedding.weight F32), "fp16" (TI2V 5B: all F16, no prefix) or "fp8-scaled" (14B and
    the A14B experts: block linears F8_E4M3 with 0-d F32 scale_weight / scale_input, the rest F16, a
    `scaled_fp8` marker)."""
    from diffusers import WanTransformer3DModel
    from wan_app.checkpoints import convert
    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=dim // 128, attention_head_dim=128, in_channels=channels,
               out_channels=channels, text_dim=4096, freq_dim=256, ffn_dim=ffn, num_layers=layers,
               cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    sd = convert.dit_diffusers_to_official(_meta_state(lambda: WanTransformer3DModel(**cfg)))
    out: dict[str, tuple[str, tuple]] = {}
    for k, v in sd.items():
        shape = tuple(v.shape)
        if layout == "fp8-scaled" and k.startswith("blocks.") and k.endswith(".weight") and len(shape) == 2:
            out[k] = ("F8_E4M3", shape)
            out[k[: -len(".weight")] + ".scale_weight"] = ("F32", ())
            out[k[: -len(".weight")] + ".scale_input"] = ("F32", ())
        elif layout == "comfy-fp16-prefixed" and k == "patch_embedding.weight":
            out[k] = ("F32", shape)
        else:
            out[k] = ("F16", shape)
    if layout == "fp8-scaled":
        out["scaled_fp8"] = ("F8_E4M3", (0,))
    if layout == "comfy-fp16-prefixed":
        out = {"model.diffusion_model." + k: v for k, v in out.items()}
    return out


def umt5_tensors(vocab: int, d_model: int, d_kv: int, d_ff: int, layers: int, heads: int, buckets: int,
                 spm_bytes: int) -> dict[str, tuple[str, tuple]]:
    """ComfyUI's umt5_xxl_fp8_e4m3fn_scaled: HF names, `shared.weight` only, the 168 block linears F8_E4M3
    with a 0-d F32 scale_weight (no scale_input), the rest F16, the tokenizer as U8 `spiece_model`."""
    from transformers import UMT5Config, UMT5EncoderModel
    cfg = UMT5Config(vocab_size=vocab, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=layers, num_heads=heads,
                     relative_attention_num_buckets=buckets, feed_forward_proj="gated-gelu",
                     is_encoder_decoder=False, use_cache=False)
    sd = _meta_state(lambda: UMT5EncoderModel(cfg))
    out: dict[str, tuple[str, tuple]] = {}
    for k, v in sd.items():
        if k == "encoder.embed_tokens.weight":
            continue
        shape = tuple(v.shape)
        linear = k.startswith("encoder.block.") and k.endswith(".weight") and len(shape) == 2 \
            and "relative_attention_bias" not in k
        if linear:
            out[k] = ("F8_E4M3", shape)
            out[k[: -len(".weight")] + ".scale_weight"] = ("F32", ())
        else:
            out[k] = ("F16", shape)
    out["spiece_model"] = ("U8", (spm_bytes,))
    return out


def vae_tensors(kind: str) -> dict[str, tuple[str, tuple]]:
    """ComfyUI's wan_2.1_vae / wan2.2_vae: official names, no prefix, F16."""
    from diffusers import AutoencoderKLWan
    from wan_app.checkpoints import convert
    from wan_app.checkpoints.load import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD
    cfg = dict(VAE[kind])
    if kind == "wan2.2":
        cfg.update(latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD)
    sd = _meta_state(lambda: AutoencoderKLWan(**cfg))
    to_official = convert.vae22_diffusers_to_official if kind == "wan2.2" else convert.vae21_diffusers_to_official
    return {k: ("F16", tuple(v.shape)) for k, v in to_official(sd).items()}


# ---------------------------------------------------------------------------------------------------
# A valid umT5-sized sentencepiece model
# ---------------------------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _piece(text: str, score: float) -> bytes:
    """One `ModelProto.pieces` entry (field 1) holding SentencePiece{piece (1), score (2)}; type NORMAL."""
    p = text.encode()
    body = b"\x0a" + _varint(len(p)) + p + b"\x15" + struct.pack("<f", score)
    return b"\x0a" + _varint(len(body)) + body


def spm_model(pieces: int = UMT5_SPM_PIECES, seed: int = 0) -> bytes:
    """A unigram sentencepiece model trained with the sentencepiece trainer on generated text, then padded
    with rare pieces to `pieces` entries. Padding by hand because protobuf (which sentencepiece's own
    model editing needs) is not installed, and appending entries of a repeated field is simply
    concatenating their wire encoding."""
    import sentencepiece as spm
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(4000)]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, vocab_size=2000,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
                                   minloglevel=2, character_coverage=1.0)
    base = out.getvalue()
    have = spm.SentencePieceProcessor(model_proto=base).get_piece_size()
    return base + b"".join(_piece(f"\u2581x{i}", -50.0 - i * 1e-4) for i in range(max(0, pieces - have)))


# ---------------------------------------------------------------------------------------------------
# Sparse safetensors writer
# ---------------------------------------------------------------------------------------------------
def random_weights(name: str, dtype: str, shape: tuple, seed: int = 0) -> bytes | None:
    """Plausible random weights for one tensor (fan-in scaled normal, norm scales 1 ± 0.1, biases left
    zero), as F16 bytes. Used for the VAEs: with all-zero weights a VAE decodes every pixel to grey, which
    the pipeline rightly refuses as a broken video."""
    import torch
    if dtype != "F16" or len(shape) == 0:
        return None
    g = torch.Generator().manual_seed(seed + sum(name.encode()))
    if name.endswith("gamma") or "norm" in name:
        t = 1.0 + 0.1 * torch.randn(shape, generator=g)
    elif len(shape) >= 2:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        t = torch.randn(shape, generator=g) / fan_in ** 0.5
    else:
        return None
    return t.to(torch.float16).numpy().tobytes()


def write_sparse_safetensors(path: Path, tensors: dict[str, tuple[str, tuple]], data: dict[str, bytes] | None = None,
                             metadata: dict[str, str] | None = None, fill=None) -> int:
    """Write a valid safetensors file whose tensor data are holes (zeros) except `data[name]` and what
    `fill(name, dtype, shape)` returns (bytes, or None for a hole).

    Layout as safetensors writes it: 8-byte header length, JSON header padded with spaces to 8 bytes,
    then the tensors back to back (sorted by alignment, then name, so each starts aligned). Written to a
    temp file, then renamed. Returns the file size."""
    data = data or {}
    order = sorted(tensors, key=lambda k: (-ST_ITEMSIZE[tensors[k][0]], k))
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    spans = {}
    for k in order:
        dtype, shape = tensors[k]
        n = ST_ITEMSIZE[dtype]
        for s in shape:
            n *= s
        header[k] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        spans[k] = (offset, n)
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    start = 8 + len(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for k in (order if fill else ()):
            if k not in data and (blob := fill(k, *tensors[k])) is not None:
                f.seek(start + spans[k][0])
                f.write(blob)
        for k, blob in data.items():
            if len(blob) != spans[k][1]:
                raise ValueError(f"{k}: {len(blob)} bytes given, the header says {spans[k][1]}")
            f.seek(start + spans[k][0])
            f.write(blob)
        f.truncate(start + offset)
    os.replace(tmp, path)
    return start + offset


# ---------------------------------------------------------------------------------------------------
# The models folder
# ---------------------------------------------------------------------------------------------------
RANDOM = {"wan_2.1_vae.safetensors", "wan2.2_vae.safetensors"}     # files written with random_weights
FILES = {   # file -> (sub-folder, tensors); the umT5 file's tensors need the tokenizer's size
    "wan2.1_t2v_1.3B_fp16.safetensors": ("diffusion_models", lambda: dit_tensors(**DIT["1.3b"], layout="comfy-fp16-prefixed")),
    "wan2.2_ti2v_5B_fp16.safetensors": ("diffusion_models", lambda: dit_tensors(**DIT["5b"], layout="fp16")),
    "wan2.1_t2v_14B_fp8_scaled.safetensors": ("diffusion_models", lambda: dit_tensors(**DIT["14b"], layout="fp8-scaled")),
    "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": ("diffusion_models",
                                                         lambda: dit_tensors(**DIT["14b"], layout="fp8-scaled")),
    "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": ("diffusion_models",
                                                        lambda: dit_tensors(**DIT["14b"], layout="fp8-scaled")),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": ("text_encoders", None),      # needs the spm bytes
    "wan_2.1_vae.safetensors": ("vae", lambda: vae_tensors("wan2.1")),
    "wan2.2_vae.safetensors": ("vae", lambda: vae_tensors("wan2.2")),
}


def write_models(folder: Path, log=print) -> dict[str, Path]:
    """Every file of FILES under folder/<sub>/ (kept when already there at the right size)."""
    out = {}
    spm = None
    for name, (sub, make) in FILES.items():
        path = folder / sub / name
        data = None
        if make is None:
            spm = spm or spm_model()
            tensors, data = umt5_tensors(**UMT5_XXL, spm_bytes=len(spm)), {"spiece_model": spm}
        else:
            tensors = make()
        size = _expected_size(tensors)
        filled = name not in RANDOM or path.stat().st_blocks * 512 > size // 2 if path.exists() else False
        if not (path.exists() and path.stat().st_size == size and filled):
            t = time.perf_counter()
            write_sparse_safetensors(path, tensors, data, fill=random_weights if name in RANDOM else None)
            log(f"wrote {path} ({path.stat().st_size / GB:.2f} GB apparent, "
                f"{path.stat().st_blocks * 512 / 1e6:.1f} MB on disk, {time.perf_counter() - t:.1f}s)")
        out[name] = path
    return out


def _expected_size(tensors) -> int:
    """What write_sparse_safetensors will write for these tensors (header included)."""
    order = sorted(tensors, key=lambda k: (-ST_ITEMSIZE[tensors[k][0]], k))
    header, offset = {}, 0
    for k in order:
        dtype, shape = tensors[k]
        n = ST_ITEMSIZE[dtype]
        for s in shape:
            n *= s
        header[k] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    return 8 + len(raw) + (-(8 + len(raw)) % 8) + offset


# ---------------------------------------------------------------------------------------------------
# One CLI run, measured from outside
# ---------------------------------------------------------------------------------------------------
@dataclass
class Run:
    model: str
    args: list[str]
    finished: bool = False
    exit_code: int | None = None
    predicted_gb: float | None = None          # plan est_ram_gb (anonymous, as the planner counts it)
    predicted_file_gb: float | None = None     # plan est_file_gb, when the plan has it
    predicted_from: str = ""
    peak: dict = field(default_factory=dict)   # RssAnon / RssFile / RssShmem / sum / VmSwap, bytes
    phase_seconds: dict = field(default_factory=dict)
    phase_peak_anon: dict = field(default_factory=dict)
    anon_at_load_start: int | None = None
    wall: float = 0.0
    error: str = ""


_STATUS_KEYS = ("RssAnon", "RssFile", "RssShmem", "VmSwap")


def read_status(pid: int) -> dict[str, int] | None:
    try:
        text = open(f"/proc/{pid}/status").read()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in _STATUS_KEYS:
            out[key] = int(rest.split()[0]) * 1024
    return out if len(out) == len(_STATUS_KEYS) else None


def mem_available_gb() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GB
    return 0.0


_PHASES = (("load", re.compile(r"^load: ")), ("encode", re.compile(r"^encode: ")),
           ("sample", re.compile(r"^sampling")), ("decode", re.compile(r"^decode: ")),
           ("write", re.compile(r"^write: ")))


def run_cli(run: Run, python: str, repo: Path, log=print, sample_s: float = 0.05) -> Run:
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
               TQDM_MININTERVAL="0")
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, "app.py", *run.args], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    state = {"phase": "start", "t": {"start": 0.0}}
    stderr_lines: list[str] = []
    stdout_lines: list[str] = []

    def read_err():
        buf = b""
        while True:
            ch = proc.stderr.read1(4096) if hasattr(proc.stderr, "read1") else proc.stderr.read(1)
            if not ch:
                break
            buf += ch
            parts = re.split(rb"[\r\n]", buf)
            buf = parts.pop()
            for raw in parts:
                line = raw.decode(errors="replace").strip()
                if not line:
                    continue
                stderr_lines.append(line)
                for name, pat in _PHASES:
                    if pat.search(line) and name not in state["t"]:
                        state["t"][name] = time.perf_counter() - t0
                        state["phase"] = name
        if buf.strip():
            stderr_lines.append(buf.decode(errors="replace").strip())

    def read_out():
        for raw in proc.stdout:
            stdout_lines.append(raw.decode(errors="replace").rstrip())

    threads = [threading.Thread(target=read_err, daemon=True), threading.Thread(target=read_out, daemon=True)]
    for t in threads:
        t.start()
    peak = {k: 0 for k in (*_STATUS_KEYS, "sum")}
    while proc.poll() is None:
        s = read_status(proc.pid)
        if s:
            for k in _STATUS_KEYS:
                peak[k] = max(peak[k], s[k])
            peak["sum"] = max(peak["sum"], s["RssAnon"] + s["RssFile"] + s["RssShmem"])
            ph = state["phase"]
            run.phase_peak_anon[ph] = max(run.phase_peak_anon.get(ph, 0), s["RssAnon"])
            if ph == "load" and run.anon_at_load_start is None:
                run.anon_at_load_start = s["RssAnon"]
        time.sleep(sample_s)
    for t in threads:
        t.join(timeout=10)
    run.wall = time.perf_counter() - t0
    run.exit_code = proc.returncode
    run.peak = peak
    marks = sorted(state["t"].items(), key=lambda kv: kv[1]) + [("end", run.wall)]
    run.phase_seconds = {a[0]: b[1] - a[1] for a, b in zip(marks, marks[1:])}
    out_path = Path(run.args[run.args.index("--out") + 1])
    run.finished = run.exit_code == 0 and out_path.exists()
    _prediction(run, out_path, stdout_lines, stderr_lines)
    errors = [ln for ln in stderr_lines if ln.startswith(("error:", "Traceback", "Killed")) or "Error" in ln]
    if not run.finished:
        run.error = (errors[-1] if errors else (stderr_lines[-1] if stderr_lines else f"exit {run.exit_code}"))[:300]
        if run.exit_code and run.exit_code < 0:
            run.error = f"killed by signal {-run.exit_code} " + run.error
    (out_path.parent / f"{run.model}.log").write_text(
        "$ python app.py " + " ".join(run.args) + "\n\n--- stdout\n" + "\n".join(stdout_lines)
        + "\n\n--- stderr\n" + "\n".join(stderr_lines) + "\n")
    log(f"  {run.model}: exit {run.exit_code}, {run.wall:.0f}s, peak anon {peak['RssAnon'] / GB:.2f} GB, "
        f"file {peak['RssFile'] / GB:.2f} GB" + (f" — {run.error}" if run.error else ""))
    return run


def _prediction(run: Run, out_path: Path, stdout_lines, stderr_lines) -> None:
    side = out_path.with_suffix(".json")
    if side.exists():
        try:
            plan = json.loads(side.read_text()).get("plan", {})
            run.predicted_gb = plan.get("est_ram_gb")
            run.predicted_file_gb = plan.get("est_file_gb")
            run.predicted_from = "sidecar plan"
            return
        except (OSError, ValueError):
            pass
    text = "\n".join(stdout_lines + stderr_lines)
    m = re.findall(r"Estimated peak(?: RAM|:.*?RAM) ([\d.]+) GB", text)
    if m:
        run.predicted_gb, run.predicted_from = float(m[-1]), "plan reasons"
        return
    m = re.findall(r"needs ([\d.]+) GB of RAM", text)
    if m:
        run.predicted_gb, run.predicted_from = float(m[-1]), "refusal"


# ---------------------------------------------------------------------------------------------------
# One component loaded alone, measured from inside (what the planner must count for it)
# ---------------------------------------------------------------------------------------------------
def probe(kind: str, path: str, storage: str, compute: str = "fp32", model_id: str = "wan2.1-t2v-1.3b") -> dict:
    """Load one component in this process (a fresh one: run through `--probe`) and return its RssAnon /
    RssFile before, at the peak of loading (2 ms samples from a thread: torch releases the GIL while it
    converts) and after, in bytes. kind: dit | umt5 | vae | tokenizer."""
    import torch
    import accelerate  # noqa: F401  (the libraries the loader imports lazily: part of the base, not the component)
    import diffusers.models.autoencoders.autoencoder_kl_wan  # noqa: F401
    import diffusers.models.transformers.transformer_wan  # noqa: F401
    import transformers.models.t5.tokenization_t5  # noqa: F401
    import transformers.models.umt5.modeling_umt5  # noqa: F401
    from wan_app import catalog
    from wan_app.checkpoints import identify_file, load
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    found = identify_file([Path(path)])
    pid = os.getpid()
    before = read_status(pid)
    peak = dict(before)
    done = threading.Event()

    def sample():
        while not done.is_set():
            s = read_status(pid)
            if s:
                for k in ("RssAnon", "RssFile"):
                    peak[k] = max(peak[k], s[k])
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.perf_counter()
    if kind == "dit":
        obj = load.build_transformer(found, catalog.get(model_id), dt[compute], storage_dtype=storage)
    elif kind == "umt5":
        obj = load.build_text_encoder(found, dt[compute] if storage == "fp8" else dt[storage], fp8=storage == "fp8")
    elif kind == "vae":
        obj = load.build_vae(found, dt[storage])
    elif kind == "tokenizer":
        obj = load.load_tokenizer(found)
    else:
        raise ValueError(kind)
    seconds = time.perf_counter() - t
    done.set()
    th.join()
    after = read_status(pid)
    params = {}
    if hasattr(obj, "parameters"):
        for p in obj.parameters():
            params[str(p.dtype).replace("torch.", "")] = params.get(str(p.dtype).replace("torch.", ""), 0) \
                + p.numel() * p.element_size()
    del obj
    return {"kind": kind, "storage": storage, "compute": compute, "seconds": seconds, "before": before,
            "peak": peak, "after": after, "param_bytes": params}


def run_probe(kind: str, path: Path, storage: str, compute: str = "fp32", model_id: str = "wan2.1-t2v-1.3b",
              python: str = sys.executable) -> dict:
    """probe() in a fresh interpreter, so nothing loaded before distorts its numbers."""
    out = subprocess.run([python, str(Path(__file__).resolve()), "--probe", kind, str(path), storage, compute,
                          model_id], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if out.returncode != 0:
        raise RuntimeError(f"probe {kind} {storage} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


COMPONENTS = [   # (label, kind, file, storage, compute, model id, GB of MemAvailable it needs)
    ("DiT 1.3B fp32", "dit", "wan2.1_t2v_1.3B_fp16.safetensors", "fp32", "fp32", "wan2.1-t2v-1.3b", 10),
    ("DiT 1.3B bf16", "dit", "wan2.1_t2v_1.3B_fp16.safetensors", "bf16", "fp32", "wan2.1-t2v-1.3b", 8),
    ("DiT 1.3B fp16", "dit", "wan2.1_t2v_1.3B_fp16.safetensors", "fp16", "fp32", "wan2.1-t2v-1.3b", 8),
    ("DiT 5B bf16", "dit", "wan2.2_ti2v_5B_fp16.safetensors", "bf16", "fp32", "wan2.2-ti2v-5b", 14),
    ("DiT 5B fp16", "dit", "wan2.2_ti2v_5B_fp16.safetensors", "fp16", "fp32", "wan2.2-ti2v-5b", 14),
    ("DiT 5B fp8", "dit", "wan2.2_ti2v_5B_fp16.safetensors", "fp8", "fp32", "wan2.2-ti2v-5b", 14),
    ("DiT 14B fp8 (scaled file)", "dit", "wan2.1_t2v_14B_fp8_scaled.safetensors", "fp8", "fp32", "wan2.1-t2v-14b", 14),
    ("DiT 14B fp8, bf16 compute", "dit", "wan2.1_t2v_14B_fp8_scaled.safetensors", "fp8", "bf16", "wan2.1-t2v-14b", 14),
    ("umT5 fp8 (fp32 compute)", "umt5", "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "fp8", "fp32", "", 14),
    ("umT5 fp8 (bf16 compute)", "umt5", "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "fp8", "bf16", "", 14),
    ("umT5 bf16", "umt5", "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "bf16", "bf16", "", 16),
    ("VAE Wan2.1 fp32", "vae", "wan_2.1_vae.safetensors", "fp32", "fp32", "", 4),
    ("VAE Wan2.2 fp32", "vae", "wan2.2_vae.safetensors", "fp32", "fp32", "", 6),
    ("tokenizer (umT5 file)", "tokenizer", "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "-", "-", "", 4),
]


def components_table(paths: dict[str, Path], min_free: float, log=print) -> str:
    rows = [f"{'component':<27} {'base anon':>9} {'anon after':>10} {'anon peak':>9} {'file after':>10} "
            f"{'param bytes by dtype (GB)':<40} {'load s':>6}",
            "-" * 118]
    for label, kind, fname, storage, compute, mid, need in COMPONENTS:
        if not wait_for_memory(need, log):
            rows.append(f"{label:<27} skipped: not enough free memory")
            continue
        r = run_probe(kind, paths[fname], storage, compute, mid or "wan2.1-t2v-1.3b")
        b, a, p = r["before"], r["after"], r["peak"]
        by = ", ".join(f"{k} {v / GB:.3f}" for k, v in sorted(r["param_bytes"].items()))
        rows.append(f"{label:<27} {b['RssAnon'] / GB:9.3f} {(a['RssAnon'] - b['RssAnon']) / GB:+10.3f} "
                    f"{(p['RssAnon'] - b['RssAnon']) / GB:+9.3f} {(a['RssFile'] - b['RssFile']) / GB:+10.3f} "
                    f"{by:<40} {r['seconds']:6.1f}")
        log(rows[-1])
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------
RUNS = {   # model id -> extra CLI arguments (smallest valid size, 5 frames, 2-3 steps)
    "wan2.1-t2v-1.3b": ["--size", "64x64", "--steps", "2"],
    "wan2.2-ti2v-5b": ["--size", "64x64", "--steps", "2"],          # TI2V sizes are multiples of 32
    "wan2.1-t2v-14b": ["--size", "64x64", "--steps", "2"],
    # 3 steps at shift 12 give t = 999, 923, 857: high, high, then low below the 0.875 boundary
    "wan2.2-t2v-a14b": ["--size", "64x64", "--steps", "3"],
}


def wait_for_memory(min_gb: float, log, max_wait_s: float = 3600) -> bool:
    t = time.perf_counter()
    while (avail := mem_available_gb()) < min_gb:
        if time.perf_counter() - t > max_wait_s:
            return False
        log(f"  waiting: {avail:.1f} GB available, want {min_gb:.0f} GB (the machine is shared)")
        time.sleep(30)
    return True


def table(runs: list[Run]) -> str:
    head = (f"{'model':<17} {'done':<5} {'pred GB':>7} {'anon GB':>7} {'ratio':>6} {'file GB':>7} {'sum GB':>6} "
            f"{'swap':>4} {'load s':>6} {'enc s':>6} {'samp s':>6} {'dec s':>6} {'write s':>7} {'wall s':>6}")
    rows = [head, "-" * len(head)]
    for r in runs:
        anon = r.peak.get("RssAnon", 0) / GB
        ratio = f"{anon / r.predicted_gb:.2f}" if r.predicted_gb else "-"
        ps = r.phase_seconds
        f = (lambda k: f"{ps[k]:6.0f}" if k in ps else f"{'-':>6}")   # noqa: E731
        rows.append(f"{r.model:<17} {'yes' if r.finished else 'no':<5} "
                    f"{(f'{r.predicted_gb:.2f}' if r.predicted_gb else '-'):>7} {anon:7.2f} {ratio:>6} "
                    f"{r.peak.get('RssFile', 0) / GB:7.2f} {r.peak.get('sum', 0) / GB:6.2f} "
                    f"{r.peak.get('VmSwap', 0) / GB:4.1f} {f('load')} {f('encode')} {f('sample')} {f('decode')} {f('write'):>7} "
                    f"{r.wall:6.0f}")
    rows.append("")
    for r in runs:
        phases = ", ".join(f"{k} {v / GB:.2f}" for k, v in r.phase_peak_anon.items())
        base = f"{r.anon_at_load_start / GB:.2f} GB" if r.anon_at_load_start else "-"
        rows.append(f"{r.model}: predicted from {r.predicted_from or '-'}"
                    + (f" (est_file_gb {r.predicted_file_gb})" if r.predicted_file_gb is not None else "")
                    + f"; anon when loading starts {base}; peak anon per phase (GB): {phases or '-'}"
                    + (f"\n    not finished: {r.error}" if r.error else ""))
    return "\n".join(rows)


PLAN_CHOICES = ("weight_dtype", "text_encoder_dtype", "experts_resident", "text_encoder_kept", "blocks_swapped")


def measured_anon(results: Path) -> dict[str, float]:
    """model -> peak anonymous GB from the last table in a results file (this script's own format)."""
    found: dict[str, float] = {}
    for line in results.read_text().splitlines() if results.exists() else []:
        cols = line.split()
        if len(cols) > 4 and cols[0] in RUNS and cols[1] == "yes":
            found[cols[0]] = float(cols[3])        # model, done, pred GB, anon GB, ...
    return found


def replan(models, folder: Path, outs: Path, python: str, repo: Path, results: Path) -> str:
    """The planner of `repo` on the files of the last measured runs: its predicted anonymous RAM beside the
    measured peak. A measurement still applies only if the plan makes the same choices as the run did
    (the sidecar's plan), since those set what loads."""
    measured = measured_anon(results)
    head = f"{'model':<17} {'ran pred':>8} {'new pred':>8} {'anon GB':>7} {'ratio':>6}  same choices as the run"
    rows = [head, "-" * len(head)]
    for m in models:
        args = ["plan", "--models-dir", str(folder), "--model", m, "--frames", "5", "--json", *RUNS[m]]
        r = subprocess.run([python, "app.py", *args], cwd=repo, capture_output=True, text=True, timeout=600)
        new = json.loads(r.stdout) if r.returncode == 0 else {}
        new = new.get("plan", new)
        side = outs / f"{m}.json"
        ran = json.loads(side.read_text()).get("plan", {}) if side.exists() else {}
        same = [k for k in PLAN_CHOICES if ran.get(k) != new.get(k)]
        anon = measured.get(m)
        ratio = f"{anon / new['est_ram_gb']:.2f}" if anon and new.get("est_ram_gb") else "-"
        rows.append(f"{m:<17} {ran.get('est_ram_gb', '-'):>8} {new.get('est_ram_gb', '-'):>8} "
                    f"{(f'{anon:.2f}' if anon else '-'):>7} {ratio:>6}  "
                    + ("yes" if ran and not same else "no run" if not ran else "no: " + ", ".join(same)))
    return "\n".join(rows)


def _git(repo: Path, *args) -> str:
    if not (repo / ".git").exists():
        return ""
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe"]:
        print(json.dumps(probe(*argv[1:])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(RUNS), help="comma-separated model ids (default: all four)")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "_work", help="folder for models and outputs")
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout whose app.py runs (default: this one)")
    ap.add_argument("--python", default=None, help="interpreter (default: <repo>/.venv/bin/python, else this one)")
    ap.add_argument("--min-free", type=float, default=14.0, help="GB of MemAvailable to wait for before each run")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "realsize_bench.txt")
    ap.add_argument("--write-only", action="store_true", help="only write the model files")
    ap.add_argument("--components", action="store_true",
                    help="also load each component alone and record its anonymous / file-backed bytes")
    ap.add_argument("--note", default="", help="a line recorded with the results (what was run)")
    ap.add_argument("--replan", action="store_true",
                    help="run nothing: this checkout's prediction for the last measured runs (from --results and"
                         " their sidecars) beside the measured peaks")
    args = ap.parse_args(argv)
    args.repo, args.work = args.repo.resolve(), args.work.resolve()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in RUNS:
            ap.error(f"--models: {m!r} is not one of {', '.join(RUNS)}")
    free = shutil.disk_usage(args.work.parent if not args.work.exists() else args.work).free
    if free < 2 * GB:
        print(f"error: only {free / GB:.1f} GB free on the disk of {args.work}; the sparse files need ~1 GB")
        return 2
    folder = args.work / "models"
    paths = write_models(folder)
    if args.write_only:
        return 0
    python = args.python or (str(args.repo / ".venv" / "bin" / "python")
                             if (args.repo / ".venv" / "bin" / "python").exists() else sys.executable)
    outs = args.work / "out"
    if args.replan:
        text = (f"# bench/realsize_bench.py --replan — {time.strftime('%Y-%m-%d %H:%M')}\n"
                f"# planner of {args.repo}" + (f" at {_git(args.repo, 'rev-parse', '--short', 'HEAD')}"
                                              if _git(args.repo, "rev-parse", "HEAD") else "")
                + (" + uncommitted changes" if _git(args.repo, "status", "--porcelain", "--untracked-files=no") else "")
                + "\n# ran pred = est_ram_gb of the plan that ran (sidecar); new pred = this planner's; anon GB ="
                  " measured peak RssAnon (last table of the results file); ratio = anon / new pred\n\n"
                + replan(models, folder, outs, python, args.repo, args.results) + "\n")
        print(text)
        with open(args.results, "a") as f:
            f.write(text + "\n")
        return 0
    parts = components_table(paths, args.min_free) if args.components else ""
    outs.mkdir(parents=True, exist_ok=True)
    runs = []
    for m in models:
        out = outs / f"{m}.mp4"
        for stale in (out, out.with_suffix(".json")):
            stale.unlink(missing_ok=True)
        run = Run(m, ["generate", "--models-dir", str(folder), "--outputs-dir", str(outs), "--model", m,
                      "--prompt", "x", "--frames", "5", "--seed", "1", "--out", str(out), *RUNS[m]])
        print(f"{m}: python app.py {' '.join(run.args)}", flush=True)
        if not wait_for_memory(args.min_free, print):
            run.error = "skipped: the machine never had enough free memory"
            runs.append(run)
            continue
        runs.append(run_cli(run, python, args.repo))
    mem_total = next((int(ln.split()[1]) * 1024 / GB for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    swap_total = next((int(ln.split()[1]) * 1024 / GB for ln in open("/proc/meminfo") if ln.startswith("SwapTotal")), 0)
    head = [f"# bench/realsize_bench.py — {time.strftime('%Y-%m-%d %H:%M')}",
            f"# machine: {os.cpu_count()} CPUs, {mem_total:.1f} GB RAM, swap {swap_total:.1f} GB, "
            f"kernel {os.uname().release}",
            f"# checkout: {args.repo}" + (f" at {_git(args.repo, 'rev-parse', '--short', 'HEAD')}"
                                          if _git(args.repo, "rev-parse", "HEAD") else " (not a git checkout)")
            + (" + uncommitted changes" if _git(args.repo, "status", "--porcelain", "--untracked-files=no") else ""),
            "# GB = 1e9 bytes. pred = plan est_ram_gb; anon/file/sum = peak RssAnon / RssFile / RssAnon+RssFile+RssShmem",
            "# of the CLI process (50 ms samples); ratio = anon / pred; phases from the CLI's progress lines."]
    if args.note:
        head.append("# " + args.note)
    text = "\n".join(head) + "\n\n" + (table(runs) + "\n" if runs else "")
    if parts:
        text += ("\nEach component loaded alone in a fresh process (bench --probe): anon / file = RssAnon / RssFile"
                 " after loading minus before (GB); anon peak = the highest RssAnon while loading.\n" + parts + "\n")
    print("\n" + text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(text + "\n")
    return 0 if all(r.finished for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
