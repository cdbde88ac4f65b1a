"""GRPO / DDPO advantages: how a sample's reward becomes the weight of its policy-gradient term.

- ``group`` (GRPO, DeepSeekMath; steer's default): (r − mean_g) / (std_g + 1e-4) within each prompt's
  group of G samples drawn at this step.
- ``per_prompt`` (DDPO, ``ddpo_pytorch/stat_tracking.py``): each prompt keeps a buffer of its last
  ``buffer_size`` rewards (the current ones appended first, across steps and resumes); while it
  holds fewer than ``min_count`` the statistics are those of the whole batch, then the buffer's;
  (r − mean) / (std + 1e-6). With DDPO's 16 / 16 a prompt needs 16 rewards of history.
- ``group_unbiased`` (DanceGRPO / MixGRPO, ``fastvideo/train_grpo_flux.py`` with ``--use_group``):
  (r − mean_g) / (std_g + 1e-8) with torch's default *unbiased* std (ddof = 1).
- ``global_std`` (Flow-GRPO, ``flow_grpo/stat_tracking.py`` with ``global_std=True``, the tracker
  cleared every epoch): (r − mean of the prompt's samples this step) / (std of all the batch's
  rewards + 1e-4). Deviation: the batch is this process' (Flow-GRPO gathers every GPU's rewards
  first).

Every other std is the population std (ddof = 0, numpy's default in those references); the statistics
run in float64; the advantages are clipped to ±``clip`` (``adv_clip_max``) afterwards, as in all of them.

Several rewards (``multi_reward="advantages"``, MixGRPO's ``--multi_reward_mix advantage_aggr``, its
default): each reward term is normalized on its own with the mode above, the normalized advantages are
summed with the terms' weights, and the sum is clipped. ``multi_reward="sum"`` (flow_grpo's
``multi_score``: advantages of the weighted sum ``avg`` of the raw rewards; MixGRPO's ``reward_aggr``)
is a weighted-sum reward treated as one reward.
"""
from __future__ import annotations

import math
from typing import MutableMapping, Optional, Sequence

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, group_size: int, clip: float = 5.0, eps: float = 1e-4) -> Tensor:
    """(r − mean_g) / (std_g + eps) within each prompt's group of G consecutive samples, clipped to ±clip."""
    r = rewards.double().view(-1, group_size)  # (P, G); float64: rewards often differ only in late digits
    adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, correction=0, keepdim=True) + eps)
    return adv.clamp(-clip, clip).reshape(-1).float()  # (P·G,)


def group_unbiased_advantages(rewards: Tensor, group_size: int, clip: float = 5.0, eps: float = 1e-8) -> Tensor:
    """DanceGRPO / MixGRPO: (r − mean_g) / (unbiased std_g + eps) within each group, clipped to ±clip."""
    r = rewards.double().view(-1, group_size)  # (P, G)
    adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, correction=1, keepdim=True) + eps)
    return adv.clamp(-clip, clip).reshape(-1).float()  # (P·G,)


def global_std_advantages(rewards: Tensor, group_size: int, clip: float = 5.0, eps: float = 1e-4) -> Tensor:
    """Flow-GRPO's ``global_std``: (r − mean_g) / (std of the whole batch + eps), clipped to ±clip."""
    r = rewards.double().view(-1, group_size)  # (P, G)
    adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(correction=0) + eps)
    return adv.clamp(-clip, clip).reshape(-1).float()  # (P·G,)


def per_prompt_advantages(rewards: Tensor, prompts: Sequence[str], history: MutableMapping[str, list],
                          buffer_size: int = 16, min_count: int = 16, clip: float = 5.0,
                          eps: float = 1e-6) -> Tensor:
    """DDPO's per-prompt tracker. ``history`` (prompt -> its last rewards, oldest first) is updated in place:
    this batch's rewards are appended, keeping the last ``buffer_size``."""
    r = rewards.double().reshape(-1)  # (B,)
    batch_mean, batch_std = r.mean(), r.std(correction=0) + eps
    adv = torch.empty_like(r)
    for prompt in dict.fromkeys(prompts):  # first-seen order, like numpy's unique (order does not matter)
        rows = torch.tensor([k for k, p in enumerate(prompts) if p == prompt])
        buffer = (list(history.get(prompt, [])) + r[rows].tolist())[-buffer_size:]
        history[prompt] = buffer
        if len(buffer) < min_count:
            mean, std = batch_mean, batch_std
        else:
            b = torch.tensor(buffer, dtype=torch.float64)
            mean, std = b.mean(), b.std(correction=0) + eps
        adv[rows] = (r[rows] - mean) / std
    return adv.clamp(-clip, clip).float()  # (B,)


def advantages(config, rewards: Tensor, prompts: Sequence[str], history: MutableMapping[str, list],
               clip: Optional[float] = None) -> Tensor:
    """The advantages of a GRPO config's ``advantages`` mode (``history``: the per-prompt buffers), clipped
    to ±``clip`` (default ``adv_clip_max``)."""
    clip = config.adv_clip_max if clip is None else clip
    if config.advantages == "per_prompt":
        return per_prompt_advantages(rewards, prompts, history, config.stat_buffer_size, config.stat_min_count, clip)
    if config.advantages == "global_std":
        return global_std_advantages(rewards, config.group_size, clip)
    if config.advantages == "group_unbiased":
        return group_unbiased_advantages(rewards, config.group_size, clip)
    return group_advantages(rewards, config.group_size, clip)


def multi_reward_advantages(config, term_rewards: Tensor, weights: Sequence[float], prompts: Sequence[str]) -> Tensor:
    """Σ_k w_k · A_k with A_k the unclipped advantages of reward term k alone (rows of ``term_rewards``,
    (K, B)), then clipped to ±``adv_clip_max`` (MixGRPO ``advantage_aggr``)."""
    if config.advantages == "per_prompt":
        raise ValueError("multi_reward='advantages' needs group advantages (group, group_unbiased or global_std), "
                         "not per_prompt; set advantages='group'")
    total = sum(w * advantages(config, r, prompts, {}, clip=math.inf) for w, r in zip(weights, term_rewards))
    return total.clamp(-config.adv_clip_max, config.adv_clip_max)  # (B,)
