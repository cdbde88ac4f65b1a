"""The denoising error every data-fitting method trains on (distillation, Diffusion-DPO / KTO, MaPO, InPO):
at a chain step i, x_i = add_noise(x0, ε), the model's (and the frozen reference's) error against the process'
training target, in model space or on the implied x̂0."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import Tensor

from steer import kernels
from steer.finetune import lora
from steer.types import Cond


def conditional(cond: Cond) -> Cond:
    """The conditional branch only: negative (unconditional) rows dropped, guidance 1."""
    return replace(cond, tensors={k: v for k, v in cond.tensors.items() if not k.startswith("negative_")},
                   guidance_scale=1.0)


def denoising_errors(trainer, x0: Tensor, cond, generator: torch.Generator,
                     noise: Optional[Tensor] = None, step: Optional[int] = None,
                     reference: bool = True) -> tuple[Tensor, Optional[Tensor]]:
    """Per-sample mean squared errors (B,) of the model and of the reference (LoRA disabled, no grad) at
    one random chain step i (``step`` given: that one), x_i = add_noise(x0, ε) (``noise`` given: that ε;
    ``reference=False``: the model's alone, the second one None)."""
    process = trainer.process
    i = random_step(process, generator) if step is None else step
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)  # (B, C, h, w)
    x_i = kernels.add_noise(process.schedule, i, x0, noise)
    target = kernels.training_target(process.schedule, i, x0, noise).float()
    c = cond if trainer.config.guided else conditional(cond)
    outputs = [process.denoise(x_i, i, c).float()]
    if reference:
        with torch.no_grad(), lora.lora_disabled(process):
            outputs.append(process.denoise(x_i, i, c).float())
    trainer.trace.add_nfe(len(outputs) * x0.shape[0])
    if trainer.config.loss_space == "x0":  # errors of the implied clean sample (weights step i by 1/SNR_i)
        outputs = [kernels.to_prediction(process.schedule, i, x_i, out).x0 for out in outputs]
        target = x0.float()
    errors = [per_sample_mse(out, target) for out in outputs]
    return errors[0], errors[1] if reference else None


def random_step(process, generator: torch.Generator) -> int:
    """A chain step index drawn uniformly from the process' S steps."""
    return int(torch.randint(process.num_steps, (1,), generator=generator))


def per_sample_mse(output: Tensor, target: Tensor) -> Tensor:
    """‖output − target‖² averaged over every dimension but the batch: (B,)."""
    return (output - target).pow(2).flatten(1).mean(dim=1)
