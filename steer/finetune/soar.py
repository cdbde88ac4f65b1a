"""SOAR: on-policy self-correction toward clean targets (Qin et al. 2026, "SOAR: Self-Correction for Optimal
Alignment and Refinement in Diffusion Models", arXiv:2604.12617; reference code Tencent-Hunyuan/HY-SOAR,
``soar/train_soar_sd3_5m.py`` and ``soar/utils/algorithm.py``).

Supervised fine-tuning trains the denoiser only on forward-noised states of the data; at inference it
meets states its own earlier steps produced (exposure bias). SOAR adds, for every clean target x0:

1. the base loss: x_i = add_noise(x0, ε) at a chain step i, ‖f_θ(x_i) − target(x0, ε)‖² (the SFT /
   RAFT loss, ``distill.denoising_loss``);
2. a stop-gradient rollout: one deterministic step of the current model (with guidance, SOAR's
   ``cfg_scale_sampling``) from x_i to x'_{i+1} — off the forward process's ray wherever the model errs;
3. ``aux_points`` re-noised states: x'_k = a·x'_{i+1} + b·ε at random steps k ≤ i+1, moving toward the
   SAME noise endpoint ε (``kernels.renoise_along``; on the ray, the forward state of (x0, ε) at k);
4. each supervised back toward x0: the target is the output whose x̂0 is exactly x0 at x'_k
   (``training_target`` of the noise x'_k implies given x0; for flow (x'_k − x0)/σ_k, the reference's
   v_corr; for ε-prediction (x'_k − sqrt(ᾱ_k)·x0)/sqrt(1−ᾱ_k)).

The loss is (Σ base + λ·Σ aux) / (n_base + λ·n_aux) over the micro-batch, as the reference normalizes.
No reward enters the loss: the reward only chooses the clean targets — here steered samples (FK by
default, drawn as ``distill`` draws them, RAFT's top fraction kept), so SOAR is the on-policy,
dense-supervision variant of distillation (``--method soar``).

Defaults (reference ``train_soar_sd3_5m.py`` arguments): ``aux_points`` = 6 (``trajectory_length``),
``aux_weight`` = 1 (``lambda_aux``), one ODE rollout path (``num_rollout_paths`` 1), rollout guidance =
the process' (the reference: 4.5, SD3's sampling guidance); the trained predictions are the
conditional branch (the reference trains without guidance).

Deviations: the base step i is uniform over the chain's S steps and the rollout is one chain step
(the reference: logit-normal t over the 1000 training timesteps and a step of 1/40); each auxiliary
state's step k is uniform over the chain steps 0..i+1 and shared by the micro-batch (the reference: σ
uniform in [σ_{t1}, 1] per sample) because ``Process.denoise`` takes one step index per call; the
clean targets are steered samples (the reference: a dataset's images; with ``steer_method=best_of_n``
and n = 1 they are the model's own samples); the reference's stochastic extra paths
(``num_rollout_paths`` > 1) are not implemented.
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from steer import chain, kernels
from steer.finetune.config import SoarConfig
from steer.finetune.denoising import conditional, per_sample_mse
from steer.finetune.distill import distill_step, train_on_steered
from steer.finetune.trainer import Trainer, TrainResult
from steer.types import Cond


def soar(process, reward, prompts: Sequence[str], config: Optional[SoarConfig] = None, *, out_dir,
         resume: bool = False, overwrite: bool = False, callback: Optional[Callable] = None,
         accelerator=None, eval_reward=None) -> TrainResult:
    """Steer for clean targets, then SOAR self-correction toward them; returns the LoRA."""
    return train_on_steered(process, reward, prompts, config or SoarConfig(), partial(distill_step, loss_fn=soar_loss),
                            out_dir=out_dir, resume=resume, overwrite=overwrite, callback=callback,
                            accelerator=accelerator, eval_reward=eval_reward)


def soar_loss(trainer: Trainer, x0: Tensor, cond: Cond, generator: torch.Generator) -> Tensor:
    """(Σ base + λ·Σ aux) / (B + λ·B·K) on one micro-batch of clean targets ``x0`` (B, ...)."""
    process, config = trainer.process, trainer.config
    schedule, S, B = process.schedule, process.num_steps, x0.shape[0]
    trained = cond if config.guided else conditional(cond)
    i = int(torch.randint(S, (1,), generator=generator))
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)  # (B, C, h, w): the noise endpoint
    x_i = kernels.add_noise(schedule, i, x0, noise)
    base = per_sample_mse(process.denoise(x_i, i, trained), kernels.training_target(schedule, i, x0, noise))
    total, count = base.sum(), float(B)
    calls = B
    if config.aux_points and config.aux_weight > 0:
        x_j = rollout(trainer, x_i, i, cond)  # (B, ...) at step j = i + 1, no gradient
        calls += 2 * B if cond.guidance_scale > 1 else B
        for _ in range(config.aux_points):
            k = int(torch.randint(min(i + 1, S - 1) + 1, (1,), generator=generator))  # a step at or before j
            x_k = kernels.renoise_along(schedule, x_j, i + 1, k, noise)
            target = kernels.training_target(schedule, k, x0, kernels.implied_noise(schedule, k, x_k, x0))
            aux = per_sample_mse(process.denoise(x_k, k, trained), target)
            total, count = total + config.aux_weight * aux.sum(), count + config.aux_weight * B
        calls += config.aux_points * B
    trainer.trace.add_nfe(calls)
    return total / count


@torch.no_grad()
def rollout(trainer: Trainer, x: Tensor, i: int, cond: Cond) -> Tensor:
    """One deterministic chain step of the current model from x_i (guided at ``rollout_guidance``)."""
    g = trainer.config.rollout_guidance
    if g is not None and g > 1 and not any(k.startswith("negative_") for k in cond.tensors):
        raise ValueError(f"rollout_guidance={g} needs guidance in the chain; run with guidance_scale > 1 "
                         f"(--guidance) or rollout_guidance=None")
    step_cond = cond if g is None else replace(cond, guidance_scale=float(g))
    return chain.step(trainer.process, x.detach(), i, step_cond, noise_level=0.0).x.detach()
