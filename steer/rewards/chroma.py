"""Chroma: the mean over pixels of max(R, G, B) − min(R, G, B) (the HSV / HSL chroma, Joblove & Greenberg
1978), in [0, 1]. A global, exact, differentiable style statistic: how much saturated colour an image
holds. On the shapes world (coloured shapes on black) it is the painted area weighted by each colour's
chroma, i.e. object size — the style task of ``benchmarks/amortize_style.py``. Prompt-independent, so it
rewards a look, not faithfulness: pair it with a prompt-aware reward or check regressions.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from steer.rewards.base import Reward


class ChromaReward(Reward):
    """Mean per-pixel chroma max(RGB) − min(RGB) of images in [0, 1] (B, 3, H, W) -> (B,)."""

    name = "chroma"
    differentiable = True

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        rgb = images.float()
        return (rgb.amax(dim=1) - rgb.amin(dim=1)).flatten(1).mean(dim=1)
