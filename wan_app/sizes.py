"""What the planner counts (figures from docs/WAN_FACTS.md): bytes of weights, activations, the text encoder and the VAE decode, from the
models' shapes. Every constant names its source. They are *estimates*: bench/swap_bench.py measures real
peaks on a GPU, and these are what to adjust when the two disagree.
"""
from __future__ import annotations

from .catalog import Arch, ModelSpec
from .hardware import GB

# ===================================================================================================
# Constants of the estimate — all in one place. GB = 1e9 bytes (docs/WAN_FACTS.md quotes 14B bf16 as 28.6 GB).
# ===================================================================================================
# torch's CUDA context + cuBLAS/cuDNN workspaces: 0.5–1 GB on current cards (nvidia-smi of an idle
# torch process); MPS keeps a smaller command-buffer pool.
DEVICE_CONTEXT_GB = {"cuda": 0.75, "mps": 0.25, "cpu": 0.0}
# The caching allocator fragments; other processes (a desktop) grow. 8% of the card, at least 0.5 GB.
VRAM_MARGIN_FRACTION = 0.08
VRAM_MARGIN_MIN_GB = 0.5
# Anonymous RAM of the process before any weights. CPU, measured by bench/realsize_bench.py (BENCHMARKS.md,
# "Real-size RAM on the CPU"): the CLI holds 0.25 GB when loading starts (0.30 GB with diffusers and
# transformers imported) and the real-size umT5 tokenizer 0.17 GB. CUDA builds map ~1.5 GB more of host
# libraries (cuBLAS, cuDNN) and pinned staging buffers; the CUDA and MPS figures are not measured yet.
RAM_BASE_GB = {"cuda": 3.0, "mps": 2.0, "cpu": 0.5}
# The share of RAM an OS, a desktop and a browser keep busy on a typical machine (the planner budgets from
# the machine's size so a plan does not change from one second to the next; a run warns when more is in use).
RAM_SYSTEM_FRACTION = 0.10
# RAM we leave on top of that.
RAM_MARGIN_FRACTION = 0.05
RAM_MARGIN_MIN_GB = 1.0
# Metal caps a process's GPU working set at about 3/4 of unified memory (recommendedMaxWorkingSetSize).
MPS_WORKING_SET_FRACTION = 0.75

# Bytes per parameter of DiT *linear weights* in each storage dtype. Norms, biases and modulation stay
# in 16 bit under fp8, as in ComfyUI's fp8 files (WAN_FACTS: "everything else F16").
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
COMPUTE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Non-block tensors read their widths from WAN_FACTS: text_dim 4096 (umT5-xxl), freq_dim 256, patch 1x2x2.
TEXT_DIM = 4096
FREQ_DIM = 256
PATCH_VOLUME = 1 * 2 * 2

# Activations of one forward pass at batch 1 (cond and uncond run one after the other), per token, in
# bytes at 16-bit compute, read off diffusers' WanTransformerBlock:
#  - attention phase: the residual stream + its fp32 norm copy + modulated input + q, k, v + the RoPE
#    temporaries (fp32) + the attention output ≈ 18·dim bytes;
#  - FFN phase: the ffn_dim-wide linear output and its GELU output (4·ffn bytes) + ~6·dim for the
#    residual stream and the normed input.
# The larger of the two is the peak. fp32 compute doubles it.
ATTN_PHASE_BYTES_PER_DIM = 18
FFN_PHASE_BYTES_PER_FFN = 4
FFN_PHASE_BYTES_PER_DIM = 6
# Wan2.2 TI2V runs with per-token timesteps (expand_timesteps): the modulation is [tokens, 6, dim] in
# fp32 (the block adds scale_shift_table to temb.float()) plus the 16-bit projection: 6·4 + 6·2 bytes.
PER_TOKEN_MODULATION_BYTES_PER_DIM = 36
# Memory-efficient attention (flash / efficient SDPA / flash_attn) needs only O(tokens·heads) scratch;
# SageAttention also keeps int8 copies of q and k (≈ 2 bytes per token per dim).
SAGE_WORKSPACE_BYTES_PER_DIM = 2
# The math kernel materialises scores (fp32) and probabilities (16 bit) per head: O(tokens²).
MATH_ATTENTION_BYTES_PER_SCORE = 6
# Allocator rounding, RoPE tables, latents, text embeddings, the cond prediction kept for CFG.
ACTIVATION_SLACK = 1.2
# fp8 storage is upcast one linear at a time; two may be alive at once (the upcast + its transpose).
FP8_UPCAST_LINEARS_IN_FLIGHT = 2
# Block swap keeps two blocks in flight: the one computing, the next being copied (wan_app.memory).
SWAP_BUFFERS = 2

# umT5-xxl encoder (WAN_FACTS): 5.681 B params → 11.4 GB in bf16; the ComfyUI fp8-scaled file is
# 6,735,906,897 bytes (block linears fp8, the 256k×4096 embedding fp16). In memory the 24 `wo` linears
# (10240×4096 each, 1.007 B params) stay 16-bit, because UMT5 casts its input to wo's dtype
# (wan_app.checkpoints.load): +1 byte each.
TEXT_ENCODER_PARAMS = 5.681e9
TEXT_ENCODER_WO_PARAMS = 24 * 10240 * 4096
TEXT_ENCODER_FP8_GB = 6.736 + TEXT_ENCODER_WO_PARAMS / 1e9
# 512 tokens × 4096 wide through 24 layers: activations are small; cuBLAS workspace dominates.
TEXT_ENCODER_WORK_GB = 0.3
# umT5 encoding on the CPU (fp32 activations, the fp8 linears upcast one at a time, and glibc arenas that
# keep what was freed): the encode phase of the four real-size runs rose 0.66-0.84 GB above their loaded
# components (bench/realsize_bench.py, BENCHMARKS.md).
TEXT_ENCODER_CPU_WORK_GB = 0.8

# VAE (WAN_FACTS: Wan2.1 VAE 126.9 M params, Wan2.2 VAE 704.7 M), run in fp32 as diffusers' examples do.
VAE_PARAMS = {"wan2.1": 126.9e6, "wan2.2": 704.7e6}
VAE_BYTES = 4
# Decoding is causal, one latent frame (→ 4 video frames) at a time, with 2 cached frames of causal
# padding per conv: its peak depends on H·W, not on the frame count. The peak is in the top decoder
# stage: Wan2.1 (base_dim 96, dim_mult [1,2,4,4]) ends with 96 channels at full resolution; Wan2.2
# (dec_dim 256, patch 2) with 256 channels at half resolution = 64 per output pixel. About 5 such
# tensors are alive at once (input, norm, padded conv input, conv output, residual).
VAE_TOP_CHANNELS_PER_PIXEL = {"wan2.1": 96, "wan2.2": 64}
VAE_CHUNK_FRAMES = 4 + 2
VAE_LIVE_TENSORS = 5
# diffusers' AutoencoderKLWan tiling: 256×256 pixel tiles (tile_sample_min_height/width).
VAE_TILE_PIXELS = 256 * 256
# The decoded video on the device in fp32, and a second copy while the chunks are concatenated.
VIDEO_DEVICE_COPIES = 2
# On the host: the fp32 video plus its uint8 frames for the encoder.
VIDEO_HOST_BYTES_PER_VALUE = 4 + 1

# RoPE in Wan has 1024 temporal positions; beyond a few hundred frames attention time is hours anyway.
MAX_FRAMES_CONSIDERED = 1025
ESTIMATE_NOTE = ("These are estimates from tensor shapes: on a CPU the RAM estimate was within 3% of the measured "
                 "peak in real-size runs (BENCHMARKS.md); GPU peaks are not measured yet (bench/gpu_check.sh).")


# ===================================================================================================
# Sizes counted from the shapes
# ===================================================================================================
def block_params(arch: Arch, image_kv: bool = False) -> tuple[int, int]:
    """(linear weight params, small params) of one transformer block.

    Linear: self-attn q,k,v,o (d² each) + cross-attn q,k,v,o (d² each: text is already d wide after
    text_embedding) + FFN (d·ffn twice). Small: their biases (8d + ffn + d), RMS norms on q and k in both
    attentions (4d), the cross-attn LayerNorm (2d), the modulation table (6d).
    14B: 8·5120² + 2·5120·13824 = 351.3 M → 335 MiB in fp8 (WAN_FACTS ≈ 335 MiB).
    """
    d, f = arch.dim, arch.ffn_dim
    # Wan2.1 I2V / FLF2V blocks also attend to the CLIP tokens with their own key and value (k_img, v_img:
    # d² each, + biases and norm_k_img): 16.4 B params for I2V 14B against 14.3 B for T2V.
    extra_lin, extra_small = (2 * d * d, 3 * d) if image_kv else (0, 0)
    return 8 * d * d + 2 * d * f + extra_lin, 21 * d + f + extra_small


def nonblock_params(arch: Arch) -> int:
    """patch_embedding, text_embedding (4096→d→d), time_embedding (256→d→d), time_projection (d→6d),
    head (d→out·patch) and its modulation. 14B: ≈ 233 M, so 40 blocks + these = 14.288 B (WAN_FACTS)."""
    d = arch.dim
    return (arch.in_channels * PATCH_VOLUME * d + d
            + TEXT_DIM * d + d * d + 2 * d
            + FREQ_DIM * d + d * d + 2 * d
            + d * 6 * d + 6 * d
            + d * arch.out_channels * PATCH_VOLUME + arch.out_channels * PATCH_VOLUME + 2 * d)


def total_params(arch: Arch, image_kv: bool = False) -> int:
    lin, small = block_params(arch, image_kv)
    return arch.num_layers * (lin + small) + nonblock_params(arch)


def block_gb(arch: Arch, dtype: str, image_kv: bool = False) -> float:
    lin, small = block_params(arch, image_kv)
    small_bytes = 4 if dtype == "fp32" else 2
    return (lin * WEIGHT_BYTES[dtype] + small * small_bytes) / GB


def nonblock_gb(arch: Arch, dtype: str) -> float:
    return nonblock_params(arch) * WEIGHT_BYTES[dtype] / GB


def model_gb(arch: Arch, dtype: str, image_kv: bool = False) -> float:
    """One expert's DiT weights in this storage dtype."""
    return arch.num_layers * block_gb(arch, dtype, image_kv) + nonblock_gb(arch, dtype)


def activation_gb(spec: ModelSpec, tokens: int, compute: str, efficient_attention: bool,
                  sage: bool = False) -> float:
    a = spec.arch
    per_token = max(ATTN_PHASE_BYTES_PER_DIM * a.dim,
                    FFN_PHASE_BYTES_PER_FFN * a.ffn_dim + FFN_PHASE_BYTES_PER_DIM * a.dim)
    per_token *= COMPUTE_BYTES[compute] / 2
    if spec.vae == "wan2.2":
        per_token += PER_TOKEN_MODULATION_BYTES_PER_DIM * a.dim
    total = per_token * tokens
    if not efficient_attention:
        total += a.num_heads * tokens * tokens * MATH_ATTENTION_BYTES_PER_SCORE
    elif sage:
        total += SAGE_WORKSPACE_BYTES_PER_DIM * a.dim * tokens
    return total * ACTIVATION_SLACK / GB


# The tiny test models (wan_app.tiny) come with a tiny umT5 and VAE: count them as nothing, so a small
# CI machine is not refused for an 11 GB encoder it will never load.
TINY_COMPONENT_GB = 0.01


def text_encoder_anon_gb(dtype: str, disk: str | None, spec: ModelSpec | None = None) -> float:
    """The part of umT5 that is anonymous memory: what loading converts. Tensors already in the file's
    dtype stay memory-mapped; an fp8 file in an fp8 plan converts only `wo` to 16 bit (see above)."""
    if spec is not None and spec.tiny:
        return TINY_COMPONENT_GB
    disk = disk or dtype
    if dtype == "fp8":
        return TEXT_ENCODER_WO_PARAMS * WEIGHT_BYTES["bf16"] / GB if disk == "fp8" else text_encoder_gb("fp8")
    if disk != dtype:
        return text_encoder_gb(dtype)
    # fp16: transformers keeps `wo` in fp32 (T5 overflows fp16), a converted copy of 4 bytes a parameter.
    return TEXT_ENCODER_WO_PARAMS * WEIGHT_BYTES["fp32"] / GB if dtype == "fp16" else 0.0


def dit_anon_small_gb(arch: Arch, storage: str, compute: str, spec: ModelSpec | None = None) -> float:
    """Anonymous memory of a DiT whose big tensors stay memory-mapped: fp8 files keep only the block
    linears in fp8 and convert the rest (norms, biases, modulation, the non-block layers) to the compute
    dtype (wan_app.checkpoints.load); 16-bit storage keeps diffusers' `_keep_in_fp32_modules` (the time
    embedder, norms, modulation tables) as fp32 copies."""
    if spec is not None and spec.tiny:
        return 0.0
    lin, small = block_params(arch)
    if storage in ("fp8", "gguf"):
        return (arch.num_layers * small + nonblock_params(arch)) * COMPUTE_BYTES[compute] / GB
    if storage == "fp32":
        return 0.0
    d = arch.dim
    time_embedder = FREQ_DIM * d + d * d + 2 * d
    return (time_embedder + arch.num_layers * 12 * d) * 4 / GB


# The CLIP ViT-H/14 vision tower of Wan2.1 I2V / FLF2V (32 blocks of width 1280: 0.632 B params), loaded in
# fp32 (wan_app.checkpoints.clip_vision); it encodes the image before sampling and leaves the device.
CLIP_VISION_PARAMS = 0.632e9


def clip_vision_gb(spec: ModelSpec) -> float:
    if not spec.clip:
        return 0.0
    return TINY_COMPONENT_GB if spec.tiny else CLIP_VISION_PARAMS * 4 / GB


def vae_weights_gb(spec: ModelSpec) -> float:
    """The fp32 VAE in RAM (its home between encodes and decodes)."""
    return TINY_COMPONENT_GB if spec.tiny else VAE_PARAMS[spec.vae] * VAE_BYTES / GB


def text_encoder_gb(dtype: str, spec: ModelSpec | None = None) -> float:
    if spec is not None and spec.tiny:
        return TINY_COMPONENT_GB
    if dtype == "fp8":
        return TEXT_ENCODER_FP8_GB
    return TEXT_ENCODER_PARAMS * WEIGHT_BYTES[dtype] / GB


def vae_decode_gb(spec: ModelSpec, width: int, height: int, frames: int, tiled: bool) -> float:
    """Peak memory of decoding on one device: VAE weights + the top-stage activations + the video."""
    pixels = min(width * height, VAE_TILE_PIXELS) if tiled else width * height
    act = VAE_LIVE_TENSORS * VAE_TOP_CHANNELS_PER_PIXEL[spec.vae] * VAE_CHUNK_FRAMES * pixels * VAE_BYTES
    video = VIDEO_DEVICE_COPIES * frames * 3 * width * height * VAE_BYTES
    weights = TINY_COMPONENT_GB * GB if spec.tiny else VAE_PARAMS[spec.vae] * VAE_BYTES
    return (weights + act + video) / GB


def video_host_gb(width: int, height: int, frames: int) -> float:
    return frames * 3 * width * height * VIDEO_HOST_BYTES_PER_VALUE / GB
