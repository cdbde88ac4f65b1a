"""Diffusion-KTO (Li et al. 2024, "Aligning Diffusion Models by Optimizing Human Utility").

Kahneman-Tversky optimization (Ethayarajh et al. 2024) on single samples labelled desirable or
undesirable — no pairs. With the diffusion ELBO's per-step term as the log-ratio, a sample x0 of
prompt c at a random step t with noise ε (x_t = add_noise(x0, ε), target y as for DPO) has the
implicit reward

    g = ‖y − f_ref(x_t, t, c)‖² − ‖y − f_θ(x_t, t, c)‖²      (log π_θ − log π_ref, per-dimension means)

and the loss, with the reference point z = max(0, mean of g over the batch) held constant,

    L = λ_y · (1 − σ(s_y · β · (g − z))),   s_y = +1 desirable, −1 undesirable,

the sigmoid utility (the paper's choice among the utility functions it compares), λ_D for desirable
and λ_U for undesirable samples. This is what the reference code (jacklishufan/diffusion-kto
``train_kto_sd_v1.5.py``, ``--loss kto --halo sigmoid``, ``bce_offset`` none) computes: the KL
estimate is the batch mean of g, averaged over processes, clamped at 0 and detached.

Defaults (that script's): β = 1000 (``--beta_dpo``), λ_D = λ_U = 1, uniform sampling over the labelled
samples (``desirable_fraction=None``; the authors' example run draws desirable samples with
probability 0.8: ``desirable_fraction=0.8``, the ``diffusion_kto`` preset). The reference model is the
denoiser with the LoRA disabled, under ``torch.no_grad()``; training uses the conditional branch only.
Logged: the loss, the reference point z, the share of samples on their label's side (s_y·(g − z) > 0).

Deviations: t is one of the chain's S sampling steps, shared by the micro-batch (``Process.denoise``
takes one step index per call; the reference draws one of 1000 timesteps per sample). The data come
from ``steer.finetune.preference_data`` (a verifier's pass / fail, steering pairs, or a Pick-a-Pic
dataset read as desirable winners and undesirable losers).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from steer.finetune.config import KTOConfig
from steer.finetune.denoising import denoising_errors
from steer.finetune.dpo import make_trainer
from steer.finetune.trainer import Trainer, TrainResult

METHOD = "kto"


def kto(process, reward, prompts: Sequence[str], config: Optional[KTOConfig] = None, *, out_dir,
        resume: bool = False, overwrite: bool = False, callback: Optional[Callable] = None,
        accelerator=None, eval_reward=None) -> TrainResult:
    """Diffusion-KTO LoRA fine-tuning on labelled samples (``config.source``); returns the saved LoRA.
    ``reward`` labels the online samples (a verifier for ``source="verifier"``)."""
    config = config or KTOConfig()
    trainer = make_trainer(process, reward, prompts, config, out_dir, METHOD, resume=resume, overwrite=overwrite,
                           accelerator=accelerator, callback=callback, eval_reward=eval_reward)
    return trainer.run(kto_step)


def reference_point(g: Tensor, accelerator=None) -> Tensor:
    """z = max(0, mean g) over the batch (and every process), detached."""
    z = g.detach().mean()
    if accelerator is not None and accelerator.num_processes > 1:
        z = accelerator.reduce(z, reduction="mean")
    return z.clamp(min=0)


def kto_loss(model_err: Tensor, ref_err: Tensor, desirable: Tensor, beta: float, lambda_d: float, lambda_u: float,
             accelerator=None) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, reference point z, signed margin s_y·β·(g − z) (B,)) of Diffusion-KTO's sigmoid utility."""
    g = ref_err - model_err  # (B,) the implicit log-ratio
    z = reference_point(g, accelerator)
    sign = desirable.to(g.dtype) * 2 - 1
    margin = sign * beta * (g - z)
    weight = torch.where(desirable, torch.as_tensor(lambda_d, dtype=g.dtype), torch.as_tensor(lambda_u, dtype=g.dtype))
    return (weight.to(g.device) * (1 - torch.sigmoid(margin))).mean(), z, margin


def kto_step(trainer: Trainer, generator: torch.Generator, step: int) -> dict:
    """One micro-batch of B labelled samples."""
    from steer.finetune.preference_data import preference_batch

    config = trainer.config
    batch = preference_batch(trainer, generator, step, paired=False)
    model, ref = denoising_errors(trainer, batch.x0, batch.cond, generator)
    desirable = batch.desirable.to(model.device)
    loss, z, margin = kto_loss(model, ref, desirable, config.beta, config.lambda_desirable,
                               config.lambda_undesirable, trainer.accelerator)
    trainer.backward(loss)
    return {"loss": float(loss.detach()), "rewards": batch.rewards, "eval_rewards": batch.eval_rewards,
            "prompts": batch.prompts, "kl_reference": float(z), "implicit_accuracy": float((margin > 0).float().mean()),
            "desirable_share": float(desirable.float().mean()),
            "model_error": float(model.detach().mean()), "reference_error": float(ref.mean())}
