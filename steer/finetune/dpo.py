"""Diffusion-DPO (Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference Optimization").

DPO's objective −log σ(β·[log π_θ(x^w)/π_ref(x^w) − log π_θ(x^l)/π_ref(x^l)]) with the diffusion
ELBO in place of the log-likelihoods gives, per pair (winner x^w, loser x^l of the same prompt c),
at a random step t with noise ε shared by the pair (x^w_t, x^l_t = add_noise(x^w, ε), add_noise(x^l, ε)):

    L = −log σ( −β/2 · [ (‖y^w − f_θ(x^w_t, t, c)‖² − ‖y^l − f_θ(x^l_t, t, c)‖²)
                       − (‖y^w − f_ref(x^w_t, t, c)‖² − ‖y^l − f_ref(x^l_t, t, c)‖²) ] )

with y the training target of the parameterization (``kernels.training_target``: ε for ε-prediction,
v for v-prediction, the velocity ε − x0 for flow matching) and ‖·‖² the mean over dimensions. This is
the paper's eq. 14 with the timestep weighting ω(λ_t) constant and t uniform, the factor T folded
into β — as the reference code (SalesforceAIResearch/DiffusionDPO ``train.py``) computes it:
``-0.5 * beta_dpo * (model_diff - ref_diff)``, per-sample mean squared errors, the pair's noise and
timestep shared.

The reference model is the same denoiser with the LoRA disabled (``lora.lora_disabled``), run under
``torch.no_grad()``: no second copy of the weights. Training uses the conditional branch only
(guidance 1), as the reference trains the UNet without classifier-free guidance.

Defaults: β = 5000 (the paper's and the launchers' ``--beta_dpo 5000`` for SD 1.5 and SDXL); the
preset ``diffusion_dpo`` has the rest of the reference's settings. Logged: the loss, the implicit
accuracy (share of pairs whose inside term is > 0, the reference's ``implicit_acc``) and the model's
and the reference's mean denoising errors.

Deviations: t is one of the chain's S sampling steps (where the sampler uses the model; the reference
draws t from all 1000 training timesteps) and one t serves the whole micro-batch (``Process.denoise``
takes one step index per call; the reference draws one per pair). The preference data come from
``steer.finetune.preference_data``: a Pick-a-Pic-layout dataset, or online pairs from steering or a
verifier (the paper trains on Pick-a-Pic v2 only).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from steer.finetune.config import DPOConfig
from steer.finetune.denoising import denoising_errors
from steer.finetune.trainer import Trainer, TrainResult

METHOD = DPOConfig.method  # "dpo" (config holds each method's name)


def dpo(process, reward, prompts: Sequence[str], config: Optional[DPOConfig] = None, *, out_dir,
        resume: bool = False, overwrite: bool = False, callback: Optional[Callable] = None,
        accelerator=None, eval_reward=None) -> TrainResult:
    """Diffusion-DPO LoRA fine-tuning on preference pairs (``config.source``); returns the saved LoRA.
    ``reward`` labels the online pairs (unused with ``source="dataset"``, which may pass ``prompts=()``)."""
    config = config or DPOConfig()
    trainer = make_trainer(process, reward, prompts, config, out_dir, METHOD, resume=resume, overwrite=overwrite,
                           accelerator=accelerator, callback=callback, eval_reward=eval_reward)
    return trainer.run(dpo_step)


def make_trainer(process, reward, prompts, config, out_dir, method: str, **kw) -> Trainer:
    """A ``Trainer`` for a preference method; the online sources check their steering method first."""
    if config.source != "dataset":
        from steer.catalog import check_options, resolve_method

        check_options(resolve_method(config.steer_method), dict(config.steer_options), config.steer_method)
        if not prompts:
            raise ValueError(f"source={config.source!r} draws samples of the prompts: pass at least one prompt "
                             f"(or train on a preference dataset with source='dataset')")
    return Trainer(process, reward, prompts, config, out_dir, method=method, needs_prompts=False, **kw)


def dpo_loss(model_w: Tensor, model_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """(loss, inside term (B,)): −mean log σ(−β/2 · ((m_w − m_l) − (r_w − r_l)))."""
    inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
    return -F.logsigmoid(inside).mean(), inside


def dpo_step(trainer: Trainer, generator: torch.Generator, step: int) -> dict:
    """One micro-batch: B pairs, the pair's noise shared, the DPO loss on model and reference errors."""
    from steer.finetune.preference_data import preference_batch
    from steer.finetune.trainer import concat_conds

    batch = preference_batch(trainer, generator, step, paired=True)
    B = batch.x0.shape[0] // 2
    noise = torch.randn((B, *batch.x0.shape[1:]), generator=generator).to(batch.x0.device)
    model, ref = denoising_errors(trainer, batch.x0, concat_conds([batch.cond, batch.cond]), generator,
                                  noise=torch.cat([noise, noise]))
    loss, inside = dpo_loss(model[:B], model[B:], ref[:B], ref[B:], trainer.config.beta)
    trainer.backward(loss)
    return {"loss": float(loss.detach()), "rewards": batch.rewards, "eval_rewards": batch.eval_rewards,
            "prompts": batch.prompts, "implicit_accuracy": float((inside > 0).float().mean()),
            "model_error": float(model.detach().mean()), "reference_error": float(ref.mean())}
