"""Image-to-video conditioning, as the official code builds it (Wan2.1 wan/image2video.py and
first_last_frame2video.py, Wan2.2 wan/image2video.py; docs/WAN_FACTS.md, "Image to video").

For a request with an image the pipeline does, with `img = load_image(path, "image")`:
  size        = output_size(spec, img.width, img.height)            # official max_area rule
  first       = prepare_image(img, *size)                          # [3, H, W] in [-1, 1], plain bicubic
  y           = image_condition(codec, first, frames, last)        # mask (4) + VAE latents (16)
  clip        = image_clip(clip_model, [image_tensor(img), ...])   # Wan2.1 only: [n, 257, 1280]
  conditioning = sampler.ImageToVideo(y, clip)
and for Wan2.2 TI2V 5B (spec.image_conditioning == "first_latents"): prepare_image_ti2v, then
sampler.CleanFirstLatents(ti2v_condition(codec, frame)).

Where diffusers' WanImageToVideoPipeline departs from this, this module follows the official code: its CLIP
input goes through CLIPImageProcessor (shortest side to 224, then a centre crop) instead of a straight
bicubic resize of the whole image to 224×224, and it resizes the image for the VAE with PIL's Lanczos.
The mask, the zero frames and the latent normalisation are the same in both.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

# CLIP's normalisation (wan/modules/clip.py `_clip`, the values of OpenAI CLIP) and input side
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224
ASPECT_TOLERANCE = 0.03      # a last frame may differ this much in aspect ratio from the first
MASK_CHANNELS = 4            # one per frame of a latent frame (temporal stride 4)


# ---- size -------------------------------------------------------------------------------------------
def size_for_image(image_w: int, image_h: int, max_area: int, stride: int = 8, patch: int = 2) -> tuple[int, int]:
    """(width, height) of the video for an image, as the official image2video.py computes it: the aspect
    ratio is kept, the area is at most `max_area` and each side is floored to a multiple of stride·patch.
    The arithmetic is the official one in float64, rounding included: an 832×480 image at 480·832 gives
    832×464, because 399360·(480/832) is 230399.99999999997."""
    aspect_ratio = image_h / image_w
    lat_h = round(np.sqrt(max_area * aspect_ratio) // stride // patch * patch)
    lat_w = round(np.sqrt(max_area / aspect_ratio) // stride // patch * patch)
    if lat_h < patch or lat_w < patch:
        raise UserError("image", f"a {image_w}×{image_h} image gives a {lat_w * stride}×{lat_h * stride} video at "
                                 f"{max_area:,} pixels", "use an image with an aspect ratio between 1:8 and 8:1")
    return lat_w * stride, lat_h * stride


def ti2v_size_for_image(image_w: int, image_h: int, max_area: int, multiple: int = 32) -> tuple[int, int]:
    """Wan2.2 TI2V 5B's rule (wan/utils/utils.py best_output_size): the multiple-of-32 size of at most
    `max_area` whose aspect ratio is closest to the image's, trying the width first, then the height."""
    ratio = image_w / image_h
    ow = (max_area * ratio) ** 0.5
    oh = max_area / ow
    ow1 = int(ow // multiple * multiple)
    oh1 = int(max_area / ow1 // multiple * multiple) if ow1 else 0
    oh2 = int(oh // multiple * multiple)
    ow2 = int(max_area / oh2 // multiple * multiple) if oh2 else 0
    if min(ow1, oh1, ow2, oh2) <= 0:
        raise UserError("image", f"a {image_w}×{image_h} image has no {multiple}-pixel grid size at {max_area:,} "
                                 "pixels", "use an image with an aspect ratio between 1:8 and 8:1")
    r1, r2 = ow1 / oh1, ow2 / oh2
    return (ow1, oh1) if max(ratio / r1, r1 / ratio) < max(ratio / r2, r2 / ratio) else (ow2, oh2)


def output_size(spec, image_w: int, image_h: int, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The video size for this image: the area of `size` (default: the model's default size, as the
    official `--size` gives max_area) with the image's aspect ratio, by the model's own rule."""
    w, h = size or spec.default_size
    if spec.image_conditioning == "first_latents":
        return ti2v_size_for_image(image_w, image_h, w * h, spec.size_multiple)
    return size_for_image(image_w, image_h, w * h, stride=spec.vae_stride[1], patch=2)


# ---- images -----------------------------------------------------------------------------------------
def _rgb_array(img) -> np.ndarray:
    from PIL import Image
    if isinstance(img, Image.Image):
        return np.array(img.convert("RGB"))
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected a PIL image or uint8 H×W×3 array, got {a.dtype} {a.shape}")
    return a[..., :3]


def image_tensor(img) -> torch.Tensor:
    """[3, H, W] float32 in [−1, 1] at the image's own size (TF.to_tensor(img).sub_(0.5).div_(0.5))."""
    x = torch.tensor(_rgb_array(img)).permute(2, 0, 1).float().div(255)
    return x.sub_(0.5).div_(0.5)


def prepare_image(img, width: int, height: int) -> torch.Tensor:
    """The frame given to the VAE: [3, height, width] in [−1, 1], resized as the official code does — plain
    bicubic on the [−1, 1] tensor, no crop, no antialias, no clamp (bicubic may overshoot ±1 a little)."""
    x = img if isinstance(img, torch.Tensor) else image_tensor(img)
    return F.interpolate(x[None].float().cpu(), size=(height, width), mode="bicubic")[0]


def prepare_image_ti2v(img, width: int, height: int) -> torch.Tensor:
    """Wan2.2 TI2V 5B's frame (wan/textimage2video.py i2v): scaled with PIL's Lanczos to cover the size,
    then centre-cropped to it; [3, height, width] in [−1, 1]."""
    from PIL import Image
    im = img if isinstance(img, Image.Image) else Image.fromarray(_rgb_array(img))
    im = im.convert("RGB")
    scale = max(width / im.width, height / im.height)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
    x1, y1 = (im.width - width) // 2, (im.height - height) // 2
    return image_tensor(im.crop((x1, y1, x1 + width, y1 + height)))


def conditioning_clip(first: torch.Tensor, frames: int, last: torch.Tensor | None = None) -> torch.Tensor:
    """The clip the VAE encodes: [1, 3, frames, H, W], frame 0 = the image, the others 0; FLF2V's last
    frame = the last image."""
    c, h, w = first.shape
    n_zero = frames - 1 - (last is not None)
    if n_zero < 0:
        raise UserError("frames", f"{frames} frames cannot hold a first and a last frame", "use 5 frames or more")
    parts = [first[:, None], first.new_zeros(c, n_zero, h, w)]
    if last is not None:
        parts.append(last[:, None])
    return torch.cat(parts, dim=1)[None]


def mask(frames: int, lat_h: int, lat_w: int, last: bool = False) -> torch.Tensor:
    """[1, 4, lat_f, lat_h, lat_w]: 1 on the frames given as images. Built as the official code builds it:
    a mask per video frame (first frame 1; FLF2V also the last), the first repeated 4 times so that every
    latent frame covers 4, then folded into 4 channels — so all 4 channels of latent frame 0 are 1 and, for
    FLF2V, channel 3 of the last latent frame. (The official FLF2V code hard-codes 81 frames; this works
    for any 4n+1.)"""
    if (frames - 1) % 4:
        raise UserError("frames", f"{frames} is not 4n+1", "use 5, 9, 13, … 81 frames")
    m = torch.ones(1, frames, lat_h, lat_w)
    m[:, 1:-1 if last else None] = 0
    m = torch.cat([m[:, :1].repeat_interleave(MASK_CHANNELS, dim=1), m[:, 1:]], dim=1)
    return m.view(1, m.shape[1] // MASK_CHANNELS, MASK_CHANNELS, lat_h, lat_w).transpose(1, 2)


@torch.no_grad()
def encode_video(codec, video: torch.Tensor) -> torch.Tensor:
    """VAE latents (posterior mode, normalised) of a float clip [1, 3, F, H, W] in [−1, 1]. The codec's own
    encode takes uint8 frames, which would round the bicubic-resized image; this takes the floats."""
    vae = codec._on_device()
    try:
        return codec.normalize(vae.encode(video.to(vae.device, vae.dtype)).latent_dist.mode())
    finally:
        codec._off_device()


def image_condition(codec, first: torch.Tensor, frames: int, last: torch.Tensor | None = None) -> torch.Tensor:
    """y for sampler.ImageToVideo: cat(mask, VAE latents of the conditioning clip) = [1, 20, lat_f, h, w]."""
    z = encode_video(codec, conditioning_clip(first, frames, last))
    return torch.cat([mask(frames, z.shape[3], z.shape[4], last is not None), z], dim=1)


def ti2v_condition(codec, frame: torch.Tensor) -> torch.Tensor:
    """TI2V 5B's image latents for sampler.CleanFirstLatents: the VAE latents of the one frame
    [1, 48, 1, h/16, w/16] (the official code encodes the image alone, as its first latent frame)."""
    return encode_video(codec, frame[None, :, None])


# ---- CLIP -------------------------------------------------------------------------------------------
def clip_input(image: torch.Tensor, size: int = CLIP_SIZE) -> torch.Tensor:
    """[1, 3, 224, 224] for the CLIP encoder from the image at its own size in [−1, 1] (image_tensor), as
    wan/modules/clip.py CLIPModel.visual: bicubic straight to 224×224 (no crop), ·0.5+0.5, CLIP mean/std."""
    x = F.interpolate(image[None].float(), size=(size, size), mode="bicubic", align_corners=False)
    x = x.mul_(0.5).add_(0.5)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def clip_features(clip_model, pixel: torch.Tensor) -> torch.Tensor:
    """The output of all but the last ViT block (official `use_31_block=True`: no post-norm, no head):
    [n, 257, width] for n images."""
    p = next(clip_model.parameters())
    out = clip_model(pixel_values=pixel.to(p.device, p.dtype), output_hidden_states=True)
    return out.hidden_states[-2]


def image_clip(clip_model, images: list[torch.Tensor]) -> torch.Tensor:
    """CLIP features of the image (FLF2V: first and last) given at their own size in [−1, 1]."""
    return clip_features(clip_model, torch.cat([clip_input(x) for x in images]))


# ---- checks -----------------------------------------------------------------------------------------
def load_image(path_or_array, field: str = "image"):
    """The image as an RGB PIL image, or one clear UserError naming `field` for a missing, unreadable,
    animated or empty one. The official code opens it with PIL and converts it to RGB (alpha dropped)."""
    from PIL import Image, UnidentifiedImageError
    if isinstance(path_or_array, Image.Image) or isinstance(path_or_array, np.ndarray):
        img = path_or_array if isinstance(path_or_array, Image.Image) else None
        if img is None:
            a = path_or_array
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4):
                raise UserError(field, f"is a {a.dtype} array of shape {a.shape}", "give an H×W×3 uint8 RGB image")
            if 0 in a.shape:
                raise UserError(field, f"is empty ({a.shape[1]}×{a.shape[0]} pixels)", "give an image with pixels")
            return Image.fromarray(np.ascontiguousarray(a[..., :3]))
        if 0 in img.size:
            raise UserError(field, f"is empty ({img.width}×{img.height} pixels)", "give an image with pixels")
        return img.convert("RGB")
    path = Path(path_or_array)
    if not path.exists():
        raise UserError(field, f"{path} does not exist", "give the path of a PNG, JPEG or WebP image")
    if not path.is_file():
        raise UserError(field, f"{path} is not a file", "give the path of a PNG, JPEG or WebP image")
    try:
        with Image.open(path) as im:
            if getattr(im, "is_animated", False) or getattr(im, "n_frames", 1) > 1:
                raise UserError(field, f"{path.name} is animated ({getattr(im, 'n_frames', '?')} frames)",
                                "give a still image (export the frame you want as PNG)")
            if 0 in im.size:
                raise UserError(field, f"{path.name} is empty ({im.width}×{im.height} pixels)", "give an image with pixels")
            im.load()                 # a truncated file fails here, not half-way through a run
            return im.convert("RGB")
    except UserError:
        raise
    except Image.DecompressionBombError as e:
        raise UserError(field, f"{path.name} is too large to open safely ({e})", "use an image under 89 megapixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(field, f"{path.name} cannot be read as an image ({type(e).__name__}: {str(e)[:160]})",
                        "give a PNG, JPEG or WebP image") from None


def check_image(path_or_array, field: str = "image") -> tuple[int, int]:
    """(width, height) of a usable image; UserError naming `field` otherwise (see load_image)."""
    return load_image(path_or_array, field).size


def _wh(x) -> tuple[int, int]:
    if isinstance(x, tuple):
        return x
    if isinstance(x, np.ndarray):
        return x.shape[1], x.shape[0]
    return x.size                      # PIL


def check_last_image(first, last) -> None:
    """A last frame whose aspect ratio differs from the first's by more than 3% is refused: both are
    resized to the one video size, so it would be stretched. (The official FLF2V code tries to crop a
    mismatched last frame instead, mixing up width and height in doing so.)"""
    (w1, h1), (w2, h2) = _wh(first), _wh(last)
    r1, r2 = w1 / h1, w2 / h2
    off = abs(r2 / r1 - 1)
    if off > ASPECT_TOLERANCE:
        raise UserError("last_image", f"is {w2}×{h2} (aspect {r2:.3f}) but the first image is {w1}×{h1} "
                                      f"(aspect {r1:.3f}): {off:.0%} apart",
                        f"crop the last frame to the first one's shape (at most {ASPECT_TOLERANCE:.0%} apart)")


def check_inputs(spec, image, last_image) -> None:
    """Which images a model takes, before anything loads: a T2V model says which models take one; an I2V
    model needs its image; a last frame needs a first frame and a first-last-frame model."""
    from . import catalog
    if last_image is not None and image is None:
        raise UserError("last_image", "a last frame was given without a first frame", "give the first frame as image too")
    if image is not None and spec.image_input == "none":
        raise UserError("image", f"{spec.name} does not take an image",
                        "choose a model that does: " + ", ".join(catalog.image_models()))
    if last_image is not None and spec.image_input != "image+last":
        takes = [s.id for s in catalog.MODELS.values() if s.image_input == "image+last" and not s.tiny]
        raise UserError("last_image", f"{spec.name} does not take a last frame", "choose " + " or ".join(takes))
    if image is None and spec.image_required:
        raise UserError("image", f"{spec.name} makes a video from an image", "give the image to start from")
    if spec.image_input == "image+last" and last_image is None:
        raise UserError("last_image", f"{spec.name} needs a last frame too", "give the frame the video should end on")


def describe_image(path) -> dict:
    """What a video's metadata keeps of an input image: its name, SHA-256 and size (not the pixels)."""
    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    w, ht = check_image(path)
    return {"name": path.name, "sha256": h.hexdigest(), "width": w, "height": ht}
