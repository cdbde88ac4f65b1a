"""CLIP-family image preprocessing in torch, so gradients reach the pixels.

The reference pipeline (OpenAI CLIP, open_clip, HPSv2, PickScore's ``CLIPImageProcessor``, ImageReward's
BLIP transform) is, on a PIL image: ``Resize(size, BICUBIC)`` of the short side (PIL resampling is
antialiased), ``CenterCrop(size)``, ``ToTensor()``, ``Normalize(CLIP_MEAN, CLIP_STD)``. Here the same
steps run on float tensors: ``F.interpolate(mode="bicubic", antialias=True)`` reproduces PIL's
antialiased bicubic filter; like PIL it filters horizontally then vertically and clips to [0, 1]
after each pass (PIL stores each pass as uint8), and the crop offsets follow torchvision's
``center_crop`` rounding. Rounded to uint8, the result is within one level (1/255) of PIL's on
random images (tested); PIL's own uint8 rounding is the only difference.
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
    out = _bicubic(images, (h, new_w)).clamp(0.0, 1.0)  # (B, 3, h, w') horizontal pass first, as PIL
    return _bicubic(out, (new_h, new_w)).clamp(0.0, 1.0)  # (B, 3, h', w')


def _bicubic(images: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)


def center_crop(images: Tensor, size: int) -> Tensor:
    """Central ``size`` x ``size`` crop, offsets rounded like torchvision's ``center_crop``."""
    h, w = images.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"center_crop: image {h}x{w} is smaller than the crop {size}; resize it first")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return images[..., top:top + size, left:left + size]  # (B, 3, size, size)


def normalize(images: Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    """``(x - mean) / std`` per channel."""
    m = images.new_tensor(mean).view(1, 3, 1, 1)
    s = images.new_tensor(std).view(1, 3, 1, 1)
    return (images - m) / s


def clip_preprocess(images: Tensor, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    """Images (B, 3, H, W) in [0, 1] -> normalized model input (B, 3, size, size), differentiable."""
    pixels = center_crop(resize_short_side(images, size), size)  # (B, 3, size, size)
    return normalize(pixels, mean, std)
