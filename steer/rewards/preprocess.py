"""CLIP-family image preprocessing in torch, so gradients reach the pixels.

Two originals, each reproduced on float tensors:

- **Short side + center crop** (OpenAI CLIP, the LAION aesthetic predictor, ImageReward's BLIP transform,
  transformers' ``CLIPImageProcessor`` used by PickScore and CLIP score): on a PIL image,
  ``Resize(size, BICUBIC)`` of the short side (PIL resampling is antialiased), ``CenterCrop(size)``,
  ``ToTensor()``, ``Normalize(CLIP_MEAN, CLIP_STD)``. ``F.interpolate(mode="bicubic", antialias=True)``
  reproduces PIL's antialiased bicubic filter; like PIL it filters horizontally then vertically and
  clips to [0, 1] after each pass (PIL stores each pass as uint8). The crop offset is rounded as the
  original does: torchvision's ``center_crop`` rounds ``(h - size) / 2`` (``crop="round"``), transformers'
  ``CLIPImageProcessor`` floors it (``crop="floor"``; the two differ by one pixel when the margin is
  3 mod 4). Rounded to uint8, the result is within one level (1/255) of PIL's (tested).
- **Letterbox** (HPSv2 / v2.1: ``create_model_and_transforms(..., light_augmentation=True)`` gives
  ``ToTensor()`` then ``ResizeMaxSize(224, fill=0)``): the *long* side is resized to ``size``
  (each side ``round(side * size / long)``) by torchvision's tensor resize (one antialiased bicubic
  pass on floats, no clipping), then zero-padded (black, before normalization) to ``size`` x ``size``,
  ``pad // 2`` before and the rest after. Deviation: the original skips the resize *and the pad* when
  the long side already equals ``size``, so a 224x160 image would reach the ViT non-square and fail;
  here it is padded.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_short_side(images: Tensor, size: int) -> Tensor:
    """Antialiased bicubic resize so that the short side is ``size`` (torchvision's ``Resize(size)``)."""
    h, w = images.shape[-2:]
    short, long = min(h, w), max(h, w)
    if short == size:
        return images
    new_long = int(size * long / short)  # torchvision truncates the long side
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    return pil_bicubic(images, (new_h, new_w))


def pil_bicubic(images: Tensor, size: tuple[int, int]) -> Tensor:
    """PIL's ``Image.resize(size, BICUBIC)`` on floats: antialiased, width pass then height pass, each
    clipped to [0, 1] (PIL stores each pass as uint8)."""
    out = _bicubic(images, (images.shape[-2], size[1])).clamp(0.0, 1.0)  # (B, 3, h, w') horizontal first
    return _bicubic(out, tuple(size)).clamp(0.0, 1.0)  # (B, 3, h', w')


def _bicubic(images: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)


def center_crop(images: Tensor, size: int, crop: str = "round") -> Tensor:
    """Central ``size`` x ``size`` crop; offsets rounded like torchvision's ``center_crop``
    (``crop="round"``) or floored like transformers' ``CLIPImageProcessor`` (``crop="floor"``)."""
    h, w = images.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"center_crop: image {h}x{w} is smaller than the crop {size}; resize it first")
    if crop not in ("round", "floor"):
        raise ValueError(f"center_crop: crop must be 'round' or 'floor', got {crop!r}")
    offset = (lambda m: int(round(m / 2.0))) if crop == "round" else (lambda m: m // 2)
    top, left = offset(h - size), offset(w - size)
    return images[..., top:top + size, left:left + size]  # (B, 3, size, size)


def letterbox(images: Tensor, size: int) -> Tensor:
    """HPSv2's ``ResizeMaxSize``: long side to ``size`` (one antialiased bicubic pass), zero-pad to a square."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    new_h, new_w = round(h * scale), round(w * scale)
    out = _bicubic(images, (new_h, new_w))  # (B, 3, h', w')
    pad_h, pad_w = size - new_h, size - new_w
    return F.pad(out, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))  # (B, 3, size, size)


def normalize(images: Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    """``(x - mean) / std`` per channel."""
    m = images.new_tensor(mean).view(1, 3, 1, 1)
    s = images.new_tensor(std).view(1, 3, 1, 1)
    return (images - m) / s


def clip_preprocess(images: Tensor, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD, crop: str = "round") -> Tensor:
    """Images (B, 3, H, W) in [0, 1] -> normalized model input (B, 3, size, size), differentiable:
    short side to ``size``, center crop (offsets by ``crop``), CLIP mean / std."""
    pixels = center_crop(resize_short_side(images, size), size, crop)  # (B, 3, size, size)
    return normalize(pixels, mean, std)


def processor_preprocess(images: Tensor, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    """transformers' ``CLIPImageProcessor`` (PickScore, CLIP score): :func:`clip_preprocess` with floored crop offsets."""
    return clip_preprocess(images, size, mean, std, crop="floor")


def hps_preprocess(images: Tensor, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    """HPSv2's evaluation transform: :func:`letterbox`, then CLIP mean / std (B, 3, size, size)."""
    return normalize(letterbox(images, size), mean, std)
