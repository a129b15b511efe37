"""The models this studio knows, as data.

Every number here is read from the official Wan2.1 / Wan2.2 configs and generate scripts
(see docs/WAN_FACTS.md). A checkpoint is matched to a spec by its *architecture* (dim, ffn, layers,
channels, read from tensor shapes); the expert pairing of Wan2.2 A14B (high / low noise) cannot be seen
in the tensors — both experts have the 14B shape — so it comes from the folder layout or file name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Official default negative prompt for all T2V and I2V tasks (wan/configs/shared_config.py).
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

SOLVERS = ("unipc", "dpm++", "euler", "lcm")


@dataclass(frozen=True)
class Arch:
    """The shape of a Wan DiT, as far as its tensors tell it."""
    dim: int
    ffn_dim: int
    num_layers: int
    in_channels: int
    out_channels: int
    head_dim: int = 128

    @property
    def num_heads(self) -> int:
        return self.dim // self.head_dim


@dataclass(frozen=True)
class Download:
    """Where a missing file can be fetched from (huggingface_hub), and where it goes."""
    repo: str
    filename: str          # path inside the repo
    subdir: str            # folder under the models dir: diffusion_models / text_encoders / vae / clip_vision
    approx_gb: float


@dataclass(frozen=True)
class ModelSpec:
    id: str
    name: str
    arch: Arch
    vae: str                     # "wan2.1" (z 16, stride 4·8·8) or "wan2.2" (z 48, stride 4·16·16)
    experts: int                 # 2 for Wan2.2 A14B (high-noise, low-noise)
    params: float                # DiT parameter count (one expert)
    steps: int
    shift: float
    guidance: float              # CFG; for A14B the high-noise expert's
    guidance_2: float | None     # A14B: the low-noise expert's CFG
    boundary: float | None       # A14B: t >= boundary*1000 -> high-noise expert
    fps: int
    frames: int                  # training length
    sizes: tuple[tuple[int, int], ...]   # official (W, H), first is the default
    size_multiple: int           # 16 for the 8x VAE (patch 2), 32 for the 16x VAE
    text_len: int = 512
    text_dim: int = 4096         # umT5-xxl d_model; the DiT's text_embedding input
    tiny: bool = False
    diffusers_repo: str | None = None
    downloads: tuple[Download, ...] = field(default=())
    # What image a request may give: "none", "image" (a first frame) or "image+last" (first and last frame).
    image_input: str = "none"
    image_required: bool = False     # I2V / FLF2V need the image; TI2V 5B takes one optionally
    clip: bool = False               # Wan2.1 I2V / FLF2V: the CLIP ViT-H/14 image features enter through img_emb
    # Wan2.1 I2V 480P and 720P are the same shape with different weights: only a file or folder name
    # ("480p" / "720p") tells them apart, as high_noise / low_noise does for the A14B experts.
    variant: str | None = None
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT

    @property
    def image_conditioning(self) -> str | None:
        """How an image enters: "channels" (mask + image latents concatenated to the noise: the 36-channel
        I2V / FLF2V DiTs), "first_latents" (TI2V 5B: clean first latents at timestep 0), or None."""
        if self.image_input == "none":
            return None
        return "channels" if self.arch.in_channels > self.arch.out_channels else "first_latents"

    @property
    def vae_stride(self) -> tuple[int, int, int]:
        return (4, 16, 16) if self.vae == "wan2.2" else (4, 8, 8)

    @property
    def z_dim(self) -> int:
        return 48 if self.vae == "wan2.2" else 16

    @property
    def default_size(self) -> tuple[int, int]:
        return self.sizes[0]

    def latent_shape(self, frames: int, width: int, height: int) -> tuple[int, int, int, int]:
        st, sh, sw = self.vae_stride
        return (self.z_dim, (frames - 1) // st + 1, height // sh, width // sw)

    def seq_len(self, frames: int, width: int, height: int) -> int:
        """Tokens per forward pass: latent frames x (H/stride/2) x (W/stride/2) (patch 1x2x2)."""
        _, f, h, w = self.latent_shape(frames, width, height)
        return f * (h // 2) * (w // 2)


_COMFY21 = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"
_COMFY22 = "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"
_UMT5 = Download(_COMFY21, "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                 "text_encoders", 6.7)
_VAE21 = Download(_COMFY21, "split_files/vae/wan_2.1_vae.safetensors", "vae", 0.25)
_VAE22 = Download(_COMFY22, "split_files/vae/wan2.2_vae.safetensors", "vae", 1.4)
# CLIP ViT-H/14 vision tower (the one inside the official open-clip-xlm-roberta-large-vit-huge-14 .pth)
_CLIP_H = Download(_COMFY21, "split_files/clip_vision/clip_vision_h.safetensors", "clip_vision", 1.26)

_ARCH_1_3B = Arch(1536, 8960, 30, 16, 16)
_ARCH_14B = Arch(5120, 13824, 40, 16, 16)
_ARCH_5B = Arch(3072, 14336, 30, 48, 48)
# I2V / FLF2V: 16 noise + 4 mask + 16 image-latent channels in, 16 out (official configs: in_dim 36)
_ARCH_14B_I2V = Arch(5120, 13824, 40, 36, 16)
# Tiny random models built by wan_app.tiny (head_dim 16 so that 2 heads fit in dim 32).
_ARCH_TINY = Arch(32, 64, 2, 16, 16, head_dim=16)
_ARCH_TINY_48 = Arch(32, 64, 2, 48, 48, head_dim=16)
_ARCH_TINY_I2V = Arch(32, 64, 2, 36, 16, head_dim=16)
_TINY_SIZES = ((64, 64), (96, 64), (64, 96))

_P480 = ((832, 480), (480, 832))
_P720 = ((1280, 720), (720, 1280))

MODELS: dict[str, ModelSpec] = {s.id: s for s in [
    ModelSpec(
        id="wan2.1-t2v-1.3b", name="Wan2.1 T2V 1.3B", arch=_ARCH_1_3B, vae="wan2.1", experts=1,
        params=1.419e9, steps=50, shift=5.0, guidance=5.0, guidance_2=None, boundary=None,
        fps=16, frames=81, sizes=_P480, size_multiple=16,
        diffusers_repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        downloads=(Download(_COMFY21, "split_files/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors",
                            "diffusion_models", 2.8), _UMT5, _VAE21)),
    ModelSpec(
        id="wan2.1-t2v-14b", name="Wan2.1 T2V 14B", arch=_ARCH_14B, vae="wan2.1", experts=1,
        params=14.288e9, steps=50, shift=5.0, guidance=5.0, guidance_2=None, boundary=None,
        fps=16, frames=81, sizes=_P720 + _P480, size_multiple=16,
        diffusers_repo="Wan-AI/Wan2.1-T2V-14B-Diffusers",
        downloads=(Download(_COMFY21, "split_files/diffusion_models/wan2.1_t2v_14B_fp8_e4m3fn.safetensors",
                            "diffusion_models", 14.3), _UMT5, _VAE21)),
    ModelSpec(
        id="wan2.2-t2v-a14b", name="Wan2.2 T2V A14B (two experts)", arch=_ARCH_14B, vae="wan2.1",
        experts=2, params=14.288e9, steps=40, shift=12.0, guidance=4.0, guidance_2=3.0, boundary=0.875,
        fps=16, frames=81, sizes=_P720 + _P480, size_multiple=16,
        diffusers_repo="Wan-AI/Wan2.2-T2V-A14B-Diffusers",
        downloads=(Download(_COMFY22, "split_files/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
                            "diffusion_models", 14.3),
                   Download(_COMFY22, "split_files/diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
                            "diffusion_models", 14.3), _UMT5, _VAE21)),
    ModelSpec(
        id="wan2.2-ti2v-5b", name="Wan2.2 TI2V 5B (text to video)", arch=_ARCH_5B, vae="wan2.2",
        experts=1, params=5.0e9, steps=50, shift=5.0, guidance=5.0, guidance_2=None, boundary=None,
        fps=24, frames=121, sizes=((1280, 704), (704, 1280)), size_multiple=32,
        diffusers_repo="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        downloads=(Download(_COMFY22, "split_files/diffusion_models/wan2.2_ti2v_5B_fp16.safetensors",
                            "diffusion_models", 10.0), _UMT5, _VAE22),
        image_input="image"),
    # Image to video. Defaults: Wan2.2 wan/configs/wan_i2v_A14B.py; Wan2.1 generate.py _validate_args (40 steps
    # for i2v, 50 otherwise; shift 5.0, 3.0 for i2v at 480p, 16 for flf2v; CFG 5.0) and wan/configs (flf2v's
    # negative prompt starts with "镜头切换，"). See docs/WAN_FACTS.md, "Image to video".
    ModelSpec(
        id="wan2.2-i2v-a14b", name="Wan2.2 I2V A14B (two experts)", arch=_ARCH_14B_I2V, vae="wan2.1",
        experts=2, params=14.289e9, steps=40, shift=5.0, guidance=3.5, guidance_2=3.5, boundary=0.900,
        fps=16, frames=81, sizes=_P720 + _P480, size_multiple=16,
        diffusers_repo="Wan-AI/Wan2.2-I2V-A14B-Diffusers",
        downloads=(Download(_COMFY22, "split_files/diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
                            "diffusion_models", 14.3),
                   Download(_COMFY22, "split_files/diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
                            "diffusion_models", 14.3), _UMT5, _VAE21),
        image_input="image", image_required=True),
    ModelSpec(
        id="wan2.1-i2v-14b-480p", name="Wan2.1 I2V 14B 480P", arch=_ARCH_14B_I2V, vae="wan2.1", experts=1,
        params=16.4e9, steps=40, shift=3.0, guidance=5.0, guidance_2=None, boundary=None,
        fps=16, frames=81, sizes=_P480, size_multiple=16,
        diffusers_repo="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        downloads=(Download(_COMFY21, "split_files/diffusion_models/wan2.1_i2v_480p_14B_fp8_scaled.safetensors",
                            "diffusion_models", 16.4), _CLIP_H, _UMT5, _VAE21),
        image_input="image", image_required=True, clip=True, variant="480p"),
    ModelSpec(
        id="wan2.1-i2v-14b-720p", name="Wan2.1 I2V 14B 720P", arch=_ARCH_14B_I2V, vae="wan2.1", experts=1,
        params=16.4e9, steps=40, shift=5.0, guidance=5.0, guidance_2=None, boundary=None,
        fps=16, frames=81, sizes=_P720, size_multiple=16,
        diffusers_repo="Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
        downloads=(Download(_COMFY21, "split_files/diffusion_models/wan2.1_i2v_720p_14B_fp8_scaled.safetensors",
                            "diffusion_models", 16.4), _CLIP_H, _UMT5, _VAE21),
        image_input="image", image_required=True, clip=True, variant="720p"),
    ModelSpec(
        id="wan2.1-flf2v-14b-720p", name="Wan2.1 FLF2V 14B 720P (first + last frame)", arch=_ARCH_14B_I2V,
        vae="wan2.1", experts=1, params=16.4e9, steps=50, shift=16.0, guidance=5.0, guidance_2=None,
        boundary=None, fps=16, frames=81, sizes=_P720 + _P480, size_multiple=16,
        diffusers_repo="Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers",
        downloads=(Download(_COMFY21, "split_files/diffusion_models/wan2.1_flf2v_720p_14B_fp8_e4m3fn.safetensors",
                            "diffusion_models", 16.4), _CLIP_H, _UMT5, _VAE21),
        image_input="image+last", image_required=True, clip=True,
        negative_prompt="镜头切换，" + DEFAULT_NEGATIVE_PROMPT),
    # Tiny random models (python -m wan_app.tiny DIR): same code paths, seconds on a CPU.
    ModelSpec(
        id="tiny-wan2.1-t2v", name="Tiny Wan2.1 T2V (random test weights)", arch=_ARCH_TINY,
        vae="wan2.1", experts=1, params=0.0, steps=4, shift=5.0, guidance=5.0, guidance_2=None,
        boundary=None, fps=16, frames=9, sizes=((64, 64), (96, 64), (64, 96)), size_multiple=16, text_dim=32,
        tiny=True),
    ModelSpec(
        id="tiny-wan2.2-t2v-a14b", name="Tiny Wan2.2 T2V A14B (random test weights)",
        arch=_ARCH_TINY, vae="wan2.1", experts=2, params=0.0, steps=10, shift=12.0, guidance=4.0,
        guidance_2=3.0, boundary=0.875, fps=16, frames=9, sizes=((64, 64), (96, 64), (64, 96)),
        size_multiple=16, text_dim=32, tiny=True),
    ModelSpec(
        id="tiny-wan2.2-ti2v-5b", name="Tiny Wan2.2 TI2V 5B (random test weights)",
        arch=_ARCH_TINY_48, vae="wan2.2", experts=1, params=0.0, steps=4, shift=5.0, guidance=5.0,
        guidance_2=None, boundary=None, fps=24, frames=9, sizes=((64, 64), (96, 64), (64, 96)),
        size_multiple=32, text_dim=32, tiny=True, image_input="image"),
    ModelSpec(
        id="tiny-wan2.1-i2v", name="Tiny Wan2.1 I2V with CLIP (random test weights)", arch=_ARCH_TINY_I2V,
        vae="wan2.1", experts=1, params=0.0, steps=4, shift=3.0, guidance=5.0, guidance_2=None, boundary=None,
        fps=16, frames=9, sizes=_TINY_SIZES, size_multiple=16, text_dim=32, tiny=True,
        image_input="image", image_required=True, clip=True),
    ModelSpec(
        id="tiny-wan2.2-i2v-a14b", name="Tiny Wan2.2 I2V A14B (random test weights)", arch=_ARCH_TINY_I2V,
        vae="wan2.1", experts=2, params=0.0, steps=10, shift=5.0, guidance=3.5, guidance_2=3.5, boundary=0.900,
        fps=16, frames=9, sizes=_TINY_SIZES, size_multiple=16, text_dim=32, tiny=True,
        image_input="image", image_required=True),
    ModelSpec(
        id="tiny-wan2.1-flf2v", name="Tiny Wan2.1 FLF2V (random test weights)", arch=_ARCH_TINY_I2V,
        vae="wan2.1", experts=1, params=0.0, steps=4, shift=16.0, guidance=5.0, guidance_2=None, boundary=None,
        fps=16, frames=9, sizes=_TINY_SIZES, size_multiple=16, text_dim=32, tiny=True,
        image_input="image+last", image_required=True, clip=True,
        negative_prompt="镜头切换，" + DEFAULT_NEGATIVE_PROMPT),
]}


def get(model_id: str) -> ModelSpec:
    from .errors import UserError
    try:
        return MODELS[model_id]
    except KeyError:
        raise UserError("model", f"unknown model '{model_id}'",
                        "choose one of: " + ", ".join(MODELS)) from None


def image_models() -> list[str]:
    """Ids of the models that take an image (for the message a T2V model asked for one gives)."""
    return [s.id for s in MODELS.values() if s.image_input != "none" and not s.tiny]


def specs_for_dit(arch: Arch, has_img_emb: bool, first_last: bool) -> list[ModelSpec]:
    """Catalog entries a DiT can be: its shape, and whether it has the CLIP image embedder (`img_emb`)
    and FLF2V's position embedding of two images (`img_emb.emb_pos`). The A14B expert and the Wan2.1 I2V
    480P/720P variant are not in the tensors (see wan_app.checkpoints.discover)."""
    return [s for s in specs_for_arch(arch)
            if s.clip == has_img_emb and (s.image_input == "image+last") == first_last]


def specs_for_arch(arch: Arch) -> list[ModelSpec]:
    """Catalog entries whose DiT has this shape (head_dim is not stored in a checkpoint)."""
    key = (arch.dim, arch.ffn_dim, arch.num_layers, arch.in_channels, arch.out_channels)
    return [s for s in MODELS.values()
            if (s.arch.dim, s.arch.ffn_dim, s.arch.num_layers, s.arch.in_channels, s.arch.out_channels) == key]
