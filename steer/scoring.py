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


def decode_and_score(process, reward, x0: Tensor, prompts: Sequence[str], *, trace=None, method: str = "?",
                     step: Optional[int] = None, grad: bool = False) -> tuple[Tensor, Tensor]:
    """Decode x̂0 (or final latents) (B, ...) and score them, in chunks of the process' ``batch_size``
    (its latents per call); without gradients unless ``grad``. Returns images (B, 3, H, W) float32
    and rewards (B,)."""
    chunk = getattr(process, "batch_size", None) or x0.shape[0]
    images, rewards = [], []
    with torch.set_grad_enabled(grad):
        for s in range(0, x0.shape[0], chunk):
            img = decode(process, x0[s:s + chunk], trace)  # (b, 3, H, W)
            rewards.append(score_images(reward, img, prompts[s:s + chunk], trace=trace, method=method, step=step))
            images.append(img.float())
    return torch.cat(images), torch.cat(rewards)


def score_latents(process, reward, x0: Tensor, prompts: Sequence[str], *, trace=None, method: str = "?",
                  step: Optional[int] = None, grad: bool = False) -> Tensor:
    """The rewards (B,) of ``decode_and_score``."""
    return decode_and_score(process, reward, x0, prompts, trace=trace, method=method, step=step, grad=grad)[1]
