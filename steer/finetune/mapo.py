"""MaPO (Hong et al. 2024, "Margin-aware Preference Optimization for Aligning Diffusion Models without
Reference"; reference code mapo-t2i/mapo ``utils.py`` ``compute_loss`` and ``train_with_lora.py``).

Reference-free: no frozen model. Per pair (winner x^w, loser x^l of the same prompt c) at one step t
with the noise ε shared by the pair, the model's per-sample mean squared errors are
e^w = ‖y − f_θ(x^w_t, t, c)‖², e^l = ‖y − f_θ(x^l_t, t, c)‖² (y the training target, as for DPO).
Each error becomes a score that falls as the error grows (a stand-in for the likelihood),

    s(e) = ψ·e / (exp(ψ·e) − 1)          (→ 1 as e → 0; ψ = ``snr_value``),

and the loss is the winner's denoising loss (the SFT-like term on the chosen) minus β times the
log-sigmoid of the margin between the scores, scaled by the number of training timesteps T:

    L = mean(e^w) − β · mean( log σ( T · (s(e^w) − s(e^l)) ) ).

This is what the reference computes (``log_odds`` = s(e^w) − s(e^l); ``ratio = F.logsigmoid(log_odds
* num_train_timesteps)``; ``loss = model_losses_w.mean() - beta_mapo * ratio.mean()``), with the pair
sharing noise and timestep (``noise.chunk(2)[0].repeat(2)``, ``timesteps.repeat(2)``).

Defaults (the reference's ``args.py``): β = 0.1 (``--beta_mapo``), ψ = 0.5 (``--snr_value``), T the
scheduler's ``num_train_timesteps`` (1000 for SD / SDXL). The preset ``mapo`` holds the README's
LoRA run (lr 1e-5, batch 8 × accumulation 2, rank 8, 2000 steps). Logged: the loss, the margin term
−β·mean log σ(·) (``margin_loss``), the winners' mean error (``model_error``) and the share of pairs
whose winner scores higher (``implicit_accuracy``).

Deviations: t is one of the chain's S sampling steps, shared by the micro-batch (``Process.denoise``
takes one step index per call; the reference draws one of 1000 per pair). The data come from
``steer.finetune.preference_data`` — a Pick-a-Pic-layout dataset (the paper's Pick-a-Pic v2), or
online pairs from steering or a verifier; ties are dropped as the reference's ``--remove_ties`` does.
Training uses the conditional branch only (guidance 1), as the reference trains the UNet.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from steer.finetune import lora
from steer.finetune.config import MaPOConfig
from steer.finetune.denoising import denoising_errors
from steer.finetune.dpo import make_trainer
from steer.finetune.trainer import Trainer, TrainResult

METHOD = MaPOConfig.method  # "mapo"


def mapo(process, reward, prompts: Sequence[str], config: Optional[MaPOConfig] = None, *, out_dir,
         resume: bool = False, overwrite: bool = False, callback: Optional[Callable] = None,
         accelerator=None, eval_reward=None) -> TrainResult:
    """MaPO LoRA fine-tuning on preference pairs (``config.source``), no reference model; returns the saved
    LoRA. ``reward`` labels the online pairs (unused with ``source="dataset"``, which may pass ``prompts=()``)."""
    config = config or MaPOConfig()
    trainer = make_trainer(process, reward, prompts, config, out_dir, METHOD, resume=resume, overwrite=overwrite,
                           accelerator=accelerator, callback=callback, eval_reward=eval_reward)
    return trainer.run(mapo_step)


def score(error: Tensor, snr_value: float) -> Tensor:
    """s(e) = ψ·e / (exp(ψ·e) − 1), elementwise: 1 at e = 0, falling to 0 as the error grows."""
    z = (snr_value * error).clamp_min(1e-12)  # an exact zero error would be 0/0; s → 1 there
    return z / torch.expm1(z)


def mapo_loss(error_w: Tensor, error_l: Tensor, beta: float, snr_value: float,
              num_train_timesteps: int) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, margin term (B,) = −β·log σ(T·(s(e^w) − s(e^l))), log-odds (B,) = s(e^w) − s(e^l))."""
    log_odds = score(error_w, snr_value) - score(error_l, snr_value)
    margin = -beta * F.logsigmoid(log_odds * num_train_timesteps)
    return error_w.mean() + margin.mean(), margin, log_odds


def train_timesteps(trainer: Trainer) -> int:
    """T: the config's, else the pipeline scheduler's ``num_train_timesteps`` (1000 when it has none)."""
    if trainer.config.num_train_timesteps is not None:
        return trainer.config.num_train_timesteps
    scheduler = getattr(lora.pipeline_of(trainer.process), "scheduler", None)
    return int(getattr(getattr(scheduler, "config", None), "num_train_timesteps", None) or 1000)


def mapo_step(trainer: Trainer, generator: torch.Generator, step: int) -> dict:
    """One micro-batch: B pairs with shared noise, the model's errors only, MaPO's loss."""
    from steer.finetune.preference_data import preference_batch
    from steer.finetune.trainer import concat_conds

    config = trainer.config
    batch = preference_batch(trainer, generator, step, paired=True)
    B = batch.x0.shape[0] // 2
    noise = torch.randn((B, *batch.x0.shape[1:]), generator=generator).to(batch.x0.device)
    errors, _ = denoising_errors(trainer, batch.x0, concat_conds([batch.cond, batch.cond]), generator,
                                 noise=torch.cat([noise, noise]), reference=False)
    loss, margin, log_odds = mapo_loss(errors[:B], errors[B:], config.beta, config.snr_value, train_timesteps(trainer))
    trainer.backward(loss)
    e_w = errors[:B].detach()
    return {"loss": float(loss.detach()), "rewards": batch.rewards, "eval_rewards": batch.eval_rewards,
            "prompts": batch.prompts, "margin_loss": float(margin.detach().mean()),
            "implicit_accuracy": float((log_odds > 0).float().mean()), "model_error": float(e_w.mean())}
