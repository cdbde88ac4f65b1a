"""What the preference sources (``preference_data``: steering, verifier; ``preference_dataset``: a
dataset on disk) share: the micro-batch they return and the generator streams they draw from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from steer.finetune.trainer import Trainer, step_generator
from steer.types import Cond

SALT = 30_000_000  # generator streams of the online data (distill uses 10_000_000 + ...)


@dataclass
class PreferenceBatch:
    """One micro-batch. ``x0``: clean latents (DPO: 2B rows, winners then losers; KTO: B rows);
    ``cond``: B conditioning rows; ``desirable``: KTO's labels (B,) bool; ``prompts``: B prompts;
    ``rewards`` / ``eval_rewards``: the scores of the data (for the step record)."""

    x0: Tensor
    cond: Cond
    prompts: list
    desirable: Optional[Tensor] = None
    rewards: Optional[Tensor] = None
    eval_rewards: Optional[Tensor] = None


def stream_seed(trainer: Trainer, epoch: int) -> int:
    """The shuffle seed of epoch ``epoch`` of a dataset stream (the run's seed and the epoch)."""
    return int(torch.randint(2 ** 31 - 1, (1,), generator=step_generator(trainer.config.seed, SALT + epoch)))
