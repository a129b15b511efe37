"""Tiny Wan DiT GGUF files in the city96 / QuantStack layout, from a tiny model's official-name weights.

`python -m wan_app.tiny_gguf DIR` writes ComfyUI-style models folders whose DiT is a .gguf (Q8_0, Q4_K)
beside the tiny fp16 umT5 and VAE, so the GGUF path can be run and tested on a CPU.

Tensor types follow city96's converter (ComfyUI-GGUF tools/convert.py): tensors that are not 2-D (norms,
biases, the 5-D patch embedding) and the `.modulation` tables stay F32; 2-D weights take the file's type.
The tiny model's rows (32 or 64 values) are shorter than a Q4_K block (256): such a weight is written
flattened to rows of one block with its real shape in `comfy.gguf.orig_shape.<name>`, the rule ComfyUI's
converter applies to such tensors. (City96 also keeps tensors of <= 1024 values in F32; the tiny model's
attention weights have exactly 1024, so that rule is not applied here, or nothing would be quantized.)

Quantization: `gguf.quants.quantize` where the gguf package has it (Q8_0, F16, ...). gguf 0.19 can read
Q4_K but not write it, so `quantize_q4_k` is written here from the format its dequantizer reads
(gguf/quants.py Q4_K.dequantize_blocks): per 256 values an fp16 scale d and min dmin, eight 6-bit
sub-block scales and mins packed in 12 bytes, and 256 4-bit values; value = d·sc·q − dmin·m. It uses
plain min/max per sub-block (llama.cpp searches for better scales; this is for test files).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

QTYPES = ("Q8_0", "Q4_K", "F16")


def _gguf():
    import gguf
    return gguf


# ---- Q4_K by hand ---------------------------------------------------------------------------------
def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float rows (last dim a multiple of 256) -> Q4_K bytes, [rows, cols / 256 · 144] uint8."""
    x = np.asarray(x, dtype=np.float32)
    rows, cols = x.reshape(-1, x.shape[-1]).shape
    if cols % 256:
        raise ValueError(f"Q4_K needs rows of a multiple of 256 values, not {cols}")
    b = x.reshape(-1, 8, 32)                                   # blocks of 8 sub-blocks of 32
    lo = np.minimum(b.min(-1), 0.0)
    scale = (b.max(-1) - lo) / 15.0                           # >= 0
    off = -lo                                                  # >= 0
    d = (scale.max(-1) / 63.0).astype(np.float16)
    dmin = (off.max(-1) / 63.0).astype(np.float16)
    df, dminf = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(df > 0, np.rint(scale / df), 0).clip(0, 63).astype(np.uint8)
        m = np.where(dminf > 0, np.rint(off / dminf), 0).clip(0, 63).astype(np.uint8)
        step = (df * sc)[..., None]
        q = np.where(step > 0, np.rint((b + (dminf * m)[..., None]) / step), 0).clip(0, 15).astype(np.uint8)
    packed = np.empty((b.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(b.shape[0], 128)   # byte j of chunk c: q[2c] | q[2c+1] << 4
    out = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, qs], axis=1)
    return out.reshape(rows, -1)


def quantize(x: np.ndarray, qtype: str) -> np.ndarray:
    gguf = _gguf()
    if qtype == "Q4_K":
        return quantize_q4_k(x)
    return gguf.quants.quantize(np.asarray(x, dtype=np.float32), gguf.GGMLQuantizationType[qtype])


def tensor_type(name: str, shape: tuple[int, ...], qtype: str) -> str:
    """city96's choice for one tensor (see the module docstring)."""
    if len(shape) != 2 or ".modulation" in name or name == "head.modulation":
        return "F32"
    return qtype


# ---- writing --------------------------------------------------------------------------------------
def write_dit_gguf(sd: dict[str, torch.Tensor], path, qtype: str = "Q8_0", prefix: bool = False) -> Path:
    """Write an official-name Wan DiT state dict as a GGUF file (atomically: temp file, then rename)."""
    gguf = _gguf()
    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {QTYPES}, not {qtype!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), "wan")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, t in sd.items():
        a = t.detach().float().cpu().numpy()
        kind = tensor_type(name, tuple(a.shape), qtype)
        key = PREFIX + name if prefix else name
        if kind == "F32":
            w.add_tensor(key, a.astype(np.float32))
            continue
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]][0]
        if a.shape[-1] % block:
            if a.size % block:
                raise ValueError(f"{name} {tuple(a.shape)} cannot be cut into {kind} blocks of {block}")
            w.add_array(f"comfy.gguf.orig_shape.{key}", [int(d) for d in a.shape])
            a = a.reshape(-1, block)
        q = quantize(a, kind)
        w.add_tensor(key, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


PREFIX = "model.diffusion_model."


def tiny_dit_state_dict(transformer) -> dict[str, torch.Tensor]:
    from .checkpoints import convert
    return convert.dit_diffusers_to_official(transformer.state_dict())


def write_layouts(root) -> dict[str, tuple[str, Path, str]]:
    """ComfyUI-style folders with a GGUF DiT: {layout: (model id, folder, qtype)}."""
    from . import tiny
    root = Path(root)
    spm = tiny.spm_bytes()
    out = {}
    for model_id, qtype, name in (
            (tiny.T21, "Q8_0", "comfyui-gguf-q8_0"), (tiny.T21, "Q4_K", "comfyui-gguf-q4_k"),
            (tiny.A14, "Q8_0", "comfyui-a14b-gguf-q8_0")):
        refs = tiny.reference_components(model_id)
        folder = root / name
        experts = ([("high_noise_", refs.transformer), ("low_noise_", refs.transformer_2)]
                   if refs.transformer_2 is not None else [("", refs.transformer)])
        tag = "wan2.2_t2v_{e}tiny" if refs.transformer_2 is not None else "wan2.1_t2v_tiny"
        for e, t in experts:
            write_dit_gguf(tiny_dit_state_dict(t), folder / "diffusion_models" / f"{tag.format(e=e)}_{qtype}.gguf", qtype)
        # the text encoder and VAE as the other tiny ComfyUI layouts write them
        tiny._save_st(tiny._comfy_umt5(refs.text_encoder, spm, False), folder / "text_encoders" / "umt5_xxl_fp16.safetensors")
        tiny._save_st(tiny._cast(tiny._official_vae(refs.vae, refs.spec.vae), torch.float16),
                      folder / "vae" / "wan_2.1_vae.safetensors")
        out[name] = (model_id, folder, qtype)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m wan_app.tiny_gguf DIR   (writes tiny Wan models with GGUF DiTs under DIR)")
        return 2
    for name, (model_id, folder, qtype) in write_layouts(Path(argv[0])).items():
        print(f"{name:26s} {model_id:24s} {qtype:6s} {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
