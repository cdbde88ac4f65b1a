"""Qwen2-VL's image input in torch (``Qwen2VLImageProcessor``: qwen-vl-utils' ``smart_resize``, PIL
bicubic resize, CLIP mean / std, patchify into merge-window rows with ``image_grid_thw``), differentiable,
for the rewards built on Qwen2-VL (HPSv3).

The resize is ``preprocess.pil_bicubic`` (antialiased, width pass then height pass, clipped after each as
PIL's uint8 passes are), without PIL's uint8 rounding: within ~1 uint8 level (mean ~0.3) of
``Qwen2VLImageProcessorPil`` on PIL images, same ``image_grid_thw`` (tests/test_hpsv3.py).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from steer.rewards.preprocess import CLIP_MEAN, CLIP_STD, normalize, pil_bicubic

PATCH, MERGE, TEMPORAL = 14, 2, 2  # Qwen2-VL patch size, spatial merge, temporal patch size


def smart_resize(height: int, width: int, *, min_pixels: int, max_pixels: int,
                 factor: int = PATCH * MERGE) -> tuple[int, int]:
    """qwen-vl-utils' ``smart_resize``: sides multiples of ``factor``, area within [min, max], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"Qwen2-VL: image {height}x{width} has an aspect ratio above 200; crop it first")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def patchify(pixels: Tensor, patch: int = PATCH, merge: int = MERGE, temporal: int = TEMPORAL) -> tuple[Tensor, Tensor]:
    """Normalized (B, C, H, W) -> Qwen2-VL ``pixel_values`` (B*gh*gw, C*T*p*p) and ``image_grid_thw`` (B, 3).

    Rows run over merge windows (gh/m, gw/m, m, m) per image; each row is (C, T, p, p) with the still image
    repeated over the T=2 temporal slots, as ``Qwen2VLImageProcessor`` does."""
    b, c, height, width = pixels.shape
    gh, gw = height // patch, width // patch
    x = pixels.reshape(b, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (B, gh/m, gw/m, m, m, C, p, p)
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal, patch, patch)  # (B, gh/m, gw/m, m, m, C, T, p, p)
    grid = torch.tensor([[1, gh, gw]] * b, dtype=torch.long, device=pixels.device)  # (B, 3)
    return x.reshape(b * gh * gw, c * temporal * patch * patch), grid


def vision_input(images: Tensor, min_pixels: int, max_pixels: int) -> tuple[Tensor, Tensor]:
    """Images (B, 3, H, W) in [0, 1] -> (``pixel_values`` (B*gh*gw, 1176), ``image_grid_thw`` (B, 3))."""
    size = smart_resize(*images.shape[-2:], min_pixels=min_pixels, max_pixels=max_pixels)
    return patchify(normalize(pil_bicubic(images, size), CLIP_MEAN, CLIP_STD))
