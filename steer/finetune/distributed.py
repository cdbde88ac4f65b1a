"""Multi-process fine-tuning (``accelerate launch``): the run's ``Accelerator`` and the averaging of the
LoRA gradients over ranks.

Each rank draws its own prompts and noise; after the micro-steps the LoRA gradients are averaged over
ranks with ``accelerator.reduce`` — DDP's semantics. torch's ``DistributedDataParallel`` wrapper itself
is not used because reward backprop calls the denoiser several times before one backward, which its
reducer does not allow.
"""
from __future__ import annotations

from typing import Sequence

import torch

from steer.finetune.config import TrainConfig


def make_accelerator(process, config: TrainConfig):
    from accelerate import Accelerator

    cpu = torch.device(getattr(process, "device", "cpu")).type == "cpu"
    return Accelerator(mixed_precision=config.mixed_precision, cpu=cpu)


def average_gradients(accelerator, params: Sequence[torch.Tensor], world: int) -> None:
    """Replace each ``params`` gradient by its mean over the ``world`` ranks (a missing one counts as zeros)."""
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
