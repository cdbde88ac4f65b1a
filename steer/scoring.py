"""Scoring states with a reward: decode what the reward reads, count the calls, refuse NaN.

Shared by samplers, search and fine-tuning so every method counts reward calls the same way
(one image scored = one reward call) and reports a non-finite reward with the method, step and
prompt named.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


def score_images(reward, images: Tensor, prompts: Sequence[str], *, trace=None, method: str = "?",
                 step: Optional[int] = None) -> Tensor:
    """reward(images, prompts) as float32 (B,), counted into ``trace``; NaN/inf -> FloatingPointError."""
    if trace is not None:
        trace.add_reward_calls(images.shape[0])
    where = "the final sample" if step is None else f"step {step}"
    try:
        if trace is None:
            r = reward(images, list(prompts))
        else:
            with trace.timed("reward"):
                r = reward(images, list(prompts))
    except FloatingPointError as e:
        raise FloatingPointError(f"{method} at {where}: {e}") from None
    r = torch.as_tensor(r).float().reshape(-1)
    bad = ~torch.isfinite(r)
    if bad.any():
        k = int(torch.nonzero(bad)[0])
        raise FloatingPointError(
            f"{method}: reward {getattr(reward, 'name', 'reward')!r} returned {r[k].item()} at {where} "
            f"for prompt {prompts[k]!r}; check the reward model and its inputs"
        )
    return r


def decode(process, x0: Tensor, trace=None) -> Tensor:
    """process.decode(x0) -> images (B, 3, H, W), its time added to ``trace.timings['decode']``."""
    if trace is None:
        return process.decode(x0)
    with trace.timed("decode"):
        return process.decode(x0)


def score_latents(process, reward, x0: Tensor, prompts: Sequence[str], *, trace=None, method: str = "?",
                  step: Optional[int] = None, grad: bool = False) -> Tensor:
    """Decode x̂0 (or final latents) and score them; without gradients unless ``grad``."""
    with torch.set_grad_enabled(grad):
        images = decode(process, x0, trace)  # (B, 3, H, W)
        return score_images(reward, images, prompts, trace=trace, method=method, step=step)
