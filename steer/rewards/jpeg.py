"""JPEG compressibility (Black et al., 2023, "Training Diffusion Models with Reinforcement
Learning" (DDPO), arXiv:2305.13301): images rounded to uint8, saved as JPEG at quality 95 with PIL,
reward = −(file size in kB), kB = 1000 bytes. Not differentiable.
"""
from __future__ import annotations

import io
from typing import Sequence

import torch
from torch import Tensor

from steer.rewards.base import Reward

QUALITY = 95


def jpeg_size_kb(image_uint8: Tensor, quality: int = QUALITY) -> float:
    """Size in kB of one (3, H, W) uint8 image saved as JPEG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image_uint8.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000.0


def to_uint8(images: Tensor) -> Tensor:
    """[0, 1] floats -> uint8 on the CPU, rounded and clipped (B, 3, H, W)."""
    return (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8).cpu()


class JpegCompressibility(Reward):
    """−kB of the JPEG encoding: smaller files (simpler images) score higher."""

    name = "jpeg"
    differentiable = False

    def __init__(self, quality: int = QUALITY):
        if not 1 <= quality <= 95:
            raise ValueError(f"JPEG quality must be in 1..95 (PIL's useful range), got {quality}")
        self.quality = quality

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        sizes = [jpeg_size_kb(img, self.quality) for img in to_uint8(images)]
        return -torch.tensor(sizes, dtype=torch.float32, device=images.device)  # (B,)
