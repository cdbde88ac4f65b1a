"""InPO / DDIM-InPO (Lu et al. 2025, "InPO: Inversion Preference Optimization with Reparametrized DDIM for
Efficient Diffusion Model Alignment"; code JaydenLyh/InPO ``train.py``, ``--train_method ddiminpo``).

Diffusion-DPO (``steer.finetune.dpo``) noises each image of a pair with fresh random noise; InPO instead
finds the noisy latent the image *came from* under the current model: DDIM inversion of its clean latents
x0 from the chain's end back to a random step i (``kernels_inverse.inverse_transition``, the model evaluated at each
step the inversion lands on, conditioned on the prompt, without gradient), so x_i is the state whose DDIM
path leads to x0. The implied noise ε = (x_i − sqrt(ᾱ_i)·x0)/sqrt(1 − ᾱ_i) (``kernels.implied_noise``) is the
target, and the pair's loss is Diffusion-DPO's on those inverted latents:

    L = −log σ( −β/2 · [ (‖ε^w − f_θ(x^w_i, i, c)‖² − ‖ε^l − f_θ(x^l_i, i, c)‖²)
                       − (‖ε^w − f_ref(x^w_i, i, c)‖² − ‖ε^l − f_ref(x^l_i, i, c)‖²) ] )

(per-sample means over dimensions, the step shared by the pair, each image inverted on its own). The
reference code adds a random term during inversion: after each inverse step, η_inv·σ·z with z ~ N(0, I) and
σ the DDPM (η = 1) std of a forward step between neighbouring levels, η_inv = 0.1 (``inversion_eta``).
The inversion uses the model being trained (the reference: ``unet``, not ``ref_unet``), here the denoiser
with its LoRA, under ``torch.no_grad()``; the reference model is the LoRA-disabled denoiser, as for DPO.

Defaults: β = 2000 (``examples/sd15.sh --beta_dpo 2000``), η_inv = 0.1; the preset ``inpo`` has the rest
of the launcher's settings. Targets other than ε (v-prediction, flow velocity) follow
``kernels.training_target`` of the implied noise (the reference asserts ε-prediction); a flow model's
inversion is the Euler ODE run backward and needs ``inversion_eta=0``.

Deviations: the inversion runs along the chain's own S steps and lands exactly on the trained step i (the
reference draws t from 1000 timesteps, inverts along a fixed 10-step grid up to the last grid point below t
and trains at t; the ``inpo`` preset sets S = 10 so the grids agree); the inversion noise's σ is the std of
the interval just crossed (the reference's is that of the next, noisier interval, which at the noisiest grid
point lies outside the schedule); one step serves the micro-batch (the reference: one per micro-batch of one
pair, the same). Data come from ``steer.finetune.preference_data`` (a Pick-a-Pic-layout dataset as the
paper's, or online pairs from steering / a verifier). The Inversion-DPO variant (MIGHTYEZ/Inversion-DPO, its
loss on the inversion's own ε̂ of model and reference) is not implemented.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from steer import kernels, kernels_inverse
from steer.finetune.config import InPOConfig
from steer.finetune.denoising import denoising_errors, random_step
from steer.finetune.dpo import dpo_loss, make_trainer
from steer.finetune.trainer import Trainer, TrainResult

METHOD = "inpo"


def inpo(process, reward, prompts: Sequence[str], config: Optional[InPOConfig] = None, *, out_dir,
         resume: bool = False, overwrite: bool = False, callback: Optional[Callable] = None,
         accelerator=None, eval_reward=None) -> TrainResult:
    """InPO (DDIM-inversion Diffusion-DPO) LoRA fine-tuning on preference pairs; returns the saved LoRA.
    ``reward`` labels the online pairs (unused with ``source="dataset"``)."""
    config = config or InPOConfig()
    if process.schedule.kind == "flow" and config.inversion_eta > 0:
        raise ValueError("flow models are inverted by the deterministic ODE: set inversion_eta=0 "
                         "(--set inversion_eta=0)")
    trainer = make_trainer(process, reward, prompts, config, out_dir, METHOD, resume=resume, overwrite=overwrite,
                           accelerator=accelerator, callback=callback, eval_reward=eval_reward)
    return trainer.run(inpo_step)


@torch.no_grad()
def invert(trainer: Trainer, x0: Tensor, i: int, cond, generator: torch.Generator) -> Tensor:
    """DDIM inversion of clean latents ``x0`` (B, ...) from the chain's end back to level ``i``, the current
    model (LoRA on) evaluated at each level it lands on; η_inv·σ noise after each step. Returns x_i (B, ...)."""
    process, eta = trainer.process, trainer.config.inversion_eta
    x = x0.float()
    for j in range(process.num_steps - 1, i - 1, -1):
        output = process.denoise(x.to(x0.dtype), j, cond)
        x = kernels.sample(kernels_inverse.inverse_transition(process.schedule, j, x, output.float(), eta), generator)
    trainer.trace.add_nfe((process.num_steps - i) * x0.shape[0])
    return x


def inpo_step(trainer: Trainer, generator: torch.Generator, step: int) -> dict:
    """One micro-batch: B pairs inverted to one random step, the DPO loss on their implied noise."""
    from steer.finetune.denoising import conditional
    from steer.finetune.preference_data import preference_batch
    from steer.finetune.trainer import concat_conds

    process = trainer.process
    batch = preference_batch(trainer, generator, step, paired=True)
    B = batch.x0.shape[0] // 2
    cond = concat_conds([batch.cond, batch.cond])
    i = random_step(process, generator)
    x_i = invert(trainer, batch.x0, i, cond if trainer.config.guided else conditional(cond), generator)
    noise = kernels.implied_noise(process.schedule, i, x_i, batch.x0.float())  # (2B, C, h, w)
    model, ref = denoising_errors(trainer, batch.x0, cond, generator, noise=noise.to(batch.x0.dtype), step=i)
    loss, inside = dpo_loss(model[:B], model[B:], ref[:B], ref[B:], trainer.config.beta)
    trainer.backward(loss)
    return {"loss": float(loss.detach()), "rewards": batch.rewards, "eval_rewards": batch.eval_rewards,
            "prompts": batch.prompts, "implicit_accuracy": float((inside > 0).float().mean()),
            "model_error": float(model.detach().mean()), "reference_error": float(ref.mean())}
