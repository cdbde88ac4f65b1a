"""Evaluation helpers for the shapes world: degraded renders and the checker's agreement rates."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from steer.zoo.shapes import checker, world


def degrade(images: torch.Tensor, generator: torch.Generator, blur: float = 0.6, noise: float = 0.03,
            gain: float = 0.85) -> torch.Tensor:
    """Blur with a Gaussian of std ``blur`` px, scale by ``gain``, add N(0, noise^2) noise."""
    r = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-r ** 2 / (2 * blur ** 2))
    k = (k[:, None] * k[None, :]) / k.sum() ** 2  # (5, 5)
    x = F.conv2d(F.pad(images, (2, 2, 2, 2), mode="replicate"), k.expand(3, 1, 5, 5), groups=3)  # (B, 3, H, W)
    x = x * gain + noise * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)


def checker_rates(images: torch.Tensor, captions: list[str]) -> dict[str, tuple[int, int]]:
    """(hits, total) of accepting the true caption and rejecting each corruption kind."""
    out = {"true accepted": (int(checker.check(images, captions).sum()), len(captions))}
    found = checker.detect(images)
    size = images.shape[-1]
    for kind in ("relation", "color", "shape", "count"):
        hits = total = 0
        for det, cap in zip(found, captions):
            for wrong in world.mismatches(cap)[kind]:
                hits += not checker.satisfies(det, checker.parse(wrong), size)
                total += 1
        out[f"{kind} rejected"] = (hits, total)
    return out
