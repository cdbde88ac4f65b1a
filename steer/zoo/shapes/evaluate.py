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


# ---- steering on the shapes world (benchmarks/shapes.py and its test slice) ----------------------
def relational_heldout_captions(n: int | None = None) -> list[str]:
    """The held-out relational captions (104: 13 object pairs x 2 orders x 4 relations), in a fixed
    order that interleaves the pairs, so any prefix covers many pairs; the first ``n`` if given."""
    caps = sorted(world.split_captions("heldout")["relation"])
    order = sorted(range(len(caps)), key=lambda i: (i % 8, i))  # 8 captions per pair: take one of each first
    caps = [caps[i] for i in order]
    return caps if n is None else caps[:n]


def steer_captions(process, captions: list[str], method: str, reward, *, seed: int = 0, chunk: int = 26,
                   nfe_budget: int | None = None, **options) -> tuple[torch.Tensor, float, float]:
    """Steer ``process`` with ``method`` (a catalog name) over ``captions`` in chunks, as ``steer.generate``
    would (chunk at ``s`` seeded ``seed + s``): images (N, 3, H, W), NFE per caption, seconds."""
    import time

    from steer.budget import Budget
    from steer.catalog import check_options, resolve_method
    from steer.rewards import as_reward, load

    fn = resolve_method(method)
    check_options(fn, options, method)
    if isinstance(reward, str):
        reward = load(reward, device=getattr(process, "device", None))
    reward = as_reward(reward)
    budget = Budget(nfe=nfe_budget) if nfe_budget is not None else None
    images, nfe, t = [], 0, time.perf_counter()
    for s in range(0, len(captions), chunk):
        generator = torch.Generator("cpu").manual_seed(seed + s)
        res = fn(process, reward, captions[s:s + chunk], generator=generator, budget=budget, callback=None,
                 **options)
        images.append(res.images.float().cpu())
        nfe += res.trace.nfe
    return torch.cat(images), nfe / len(captions), time.perf_counter() - t


@torch.no_grad()
def judge(images: torch.Tensor, captions: list[str], clip_reward) -> tuple[float, float]:
    """(checker accuracy, mean shapes-clip reward) of images for their captions."""
    acc = checker.check(images, captions).float().mean().item()
    return acc, clip_reward(images, captions).float().mean().item()


@torch.no_grad()
def diversity(first: torch.Tensor, second: torch.Tensor, clip_reward) -> float:
    """Mean 1 - cos between the shapes CLIP image embeddings of two samples per caption (two seeds)."""
    from steer.zoo.shapes.clip import image_embeds

    a, b = image_embeds(clip_reward.model, first), image_embeds(clip_reward.model, second)  # (N, D)
    return (1 - (a * b).sum(-1)).mean().item()
