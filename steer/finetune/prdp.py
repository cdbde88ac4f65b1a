"""PRDP (Deng et al. 2024, "PRDP: Proximal Reward Difference Prediction for Large-Scale Reward
Finetuning of Diffusion Models", CVPR 2024).

Reward Difference Prediction (RDP): the KL-regularized objective max E[r(x_0, c)] − β·KL(π_θ ‖ π_ref)
has the optimum π*(x̄ | c) = π_ref(x̄ | c)·exp(r(x_0, c)/β) / Z(c) over whole trajectories x̄, so with
r̂_θ(x̄) = log π_θ(x̄ | c)/π_ref(x̄ | c) two samples of one prompt satisfy, Z cancelling,
r̂(x̄^a) − r̂(x̄^b) = (r(x^a_0) − r(x^b_0)) / β. RDP regresses it over pairs of a prompt's samples:

    L = E[ ( r̂_θ(x̄^a) − r̂_θ(x̄^b) − Δr / β )² ],   r̂_θ(x̄) = Σ_t log π_θ(x_{t+1} | x_t) / π_ref(x_{t+1} | x_t).

PRDP makes it online and proximal: the samples come from the policy π_old that drew the batch; the
sum over the chain is estimated at one step t by T times that step's term (T = the chain's stochastic
steps); and, as PPO does, the step's log-ratio may move only within the clip of the probability ratio
to π_old, the larger of the unclipped and clipped squared errors being taken:

    r̂_t = log π_θ/π_ref at step t,   r̂^clip_t = r̂^old_t + log clip(π_θ/π_old, 1 − ε, 1 + ε),
    L_t = mean over pairs of max( (T·(r̂^a_t − r̂^b_t) − Δr/β)², (T·(r̂^{a,clip}_t − r̂^{b,clip}_t) − Δr/β)² ).

Within each group of K samples of a prompt every one of the K(K − 1)/2 pairs is used. One optimizer
step averages L_t over the trained steps; with ``inner_epochs = E`` a batch serves E consecutive
optimizer steps (the snapshot π_old is renewed every E updates; the clip acts from the second). The
reference π_ref is the denoiser with the LoRA disabled; its log-probs are taken once when a batch is
drawn (no gradient). Sampling and the kernels' log-probs are grpo's (``grpo.rollout``: DDIM η = 1, the
flow SDE for flow models); the reward is only evaluated, never differentiated.

Defaults: K = 8 (the paper's large-scale 64 prompts × 8 images), β = 10 (its KL setting), log-probs
summed over dimensions (``log_prob_reduce="sum"``: the trajectory density of the derivation; "mean"
is DDPO's convention, which rescales β by the dimension), ε = 1e-4 (DDPO's), every step trained.
With ``sum`` the step log-ratios are float32 dimension means times D, so their rounding (~1e-7·D·|log p|)
can reach the size of Δr/β on large latents (D = 16384 for SD at 512 px); ``mean`` does not amplify it.

Deviations, declared: PRDP has no public code and the full paper text was not available here (its
objective, online snapshots and PPO-style clip with the max of the two losses are from the paper's
description): the form of the clip (on the probability ratio to π_old), the per-step factor T and ε
are this module's reading, not checked against the authors' code. Rewards enter raw. The trained steps
are shared by a batch.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from steer import chain, kernels
from steer.finetune import lora
from steer.finetune.config import PRDPConfig
from steer.finetune.d3po import clipped_log_ratio, kernel_noise
from steer.finetune.grpo import rollout, train_steps
from steer.finetune.trainer import Trainer, TrainResult
from steer.scoring import decode_and_score

METHOD = PRDPConfig.method  # "prdp"


def prdp(process, reward, prompts: Sequence[str], config: Optional[PRDPConfig] = None, *, out_dir,
         resume: bool = False, overwrite: bool = False, callback: Optional[Callable] = None,
         accelerator=None, eval_reward=None) -> TrainResult:
    """PRDP LoRA fine-tuning: reward differences within each prompt's group regressed by log-ratios."""
    config = config or PRDPConfig()
    trainer = Trainer(process, reward, prompts, config, out_dir, method=METHOD, resume=resume, overwrite=overwrite,
                      accelerator=accelerator, callback=callback, eval_reward=eval_reward)
    return trainer.run(prdp_step)


def group_pairs(batch_size: int, group_size: int) -> tuple[Tensor, Tensor]:
    """Rows (a, b) of every pair a < b inside each group of ``group_size`` consecutive rows."""
    a, b = torch.triu_indices(group_size, group_size, offset=1)  # (K(K−1)/2,) each
    offsets = torch.arange(0, batch_size, group_size).repeat_interleave(len(a))
    return a.repeat(batch_size // group_size) + offsets, b.repeat(batch_size // group_size) + offsets


def prdp_loss(log_prob: Tensor, old_log_prob: Tensor, ref_log_prob: Tensor, rewards: Tensor, group_size: int,
              beta: float, horizon: int, clip_range: float) -> tuple[Tensor, Tensor]:
    """(loss, predicted differences T·Δr̂ (pairs,)): mean of the larger of the unclipped and clipped
    squared errors of T·(r̂^a − r̂^b) against (r^a − r^b)/β, r̂ = log π_θ − log π_ref at one step."""
    a, b = group_pairs(log_prob.shape[0], group_size)
    r_hat = log_prob - ref_log_prob  # (B,)
    r_clip = (old_log_prob - ref_log_prob) + clipped_log_ratio(log_prob, old_log_prob, clip_range)  # (B,)
    target = ((rewards[a] - rewards[b]) / beta).to(log_prob.device, log_prob.dtype)
    predicted = horizon * (r_hat[a] - r_hat[b])
    predicted_clip = horizon * (r_clip[a] - r_clip[b])
    return torch.maximum((predicted - target) ** 2, (predicted_clip - target) ** 2).mean(), predicted


def reduced(log_prob: Tensor, trainer: Trainer) -> Tensor:
    """Dimension-averaged log-probs (as ``rollout`` stores them) as the config's reduction: × D for sum."""
    return log_prob * math.prod(trainer.process.latent_shape) if trainer.config.log_prob_reduce == "sum" else log_prob


@torch.no_grad()
def reference_log_probs(trainer: Trainer, states: Tensor, steps: Sequence[int], cond, a: float) -> Tensor:
    """log π_ref(x_{i+1} | x_i) (LoRA disabled) at the stochastic steps, zeros elsewhere: (S, B)."""
    out = torch.zeros(states.shape[0] - 1, states.shape[1], device=states.device)
    with lora.lora_disabled(trainer.process):
        for i in steps:
            g = chain.propose(trainer.process, states[i], i, cond, noise_level=a, trace=trainer.trace).kernel
            out[i] = kernels.log_prob(g, states[i + 1], reduce="mean")
    return out


@torch.no_grad()
def sample_groups(trainer: Trainer, generator: torch.Generator) -> dict:
    """P prompts × K trajectories (prompt-major): states, old and reference log-probs, rewards."""
    process, config = trainer.process, trainer.config
    idx = [i for i in trainer.pick_prompts(generator) for _ in range(config.group_size)]
    cond, a = trainer.cond(idx), kernel_noise(trainer)
    states, log_probs, stochastic = rollout(trainer, process.init_noise(len(idx), generator), cond, a, generator)
    images, rewards = decode_and_score(process, trainer.reward, states[-1], cond.prompts, trace=trainer.trace,
                                       method=METHOD)
    steps = train_steps(stochastic, config, generator)
    return {"idx": idx, "states": states, "log_probs": log_probs, "rewards": rewards.float().cpu(),
            "ref_log_probs": reference_log_probs(trainer, states, steps, cond, a), "horizon": len(stochastic),
            "steps": steps, "eval_rewards": trainer.eval_scores(images, cond.prompts)}


def current_batch(trainer: Trainer, generator: torch.Generator, step: int) -> dict:
    """This micro-batch's samples: drawn afresh every ``inner_epochs`` steps, else the stored ones."""
    batch_id = step // trainer.config.inner_epochs
    batches = trainer.extra.setdefault("prdp_batches", {})  # micro index -> batch (kept in checkpoints)
    cached = batches.get(trainer.micro)
    if cached is None or cached["id"] != batch_id:
        cached = batches[trainer.micro] = {"id": batch_id, **sample_groups(trainer, generator)}
    return cached


def prdp_step(trainer: Trainer, generator: torch.Generator, step: int) -> dict:
    """One micro-batch: the proximal RDP loss at each trained step, averaged over the steps."""
    config = trainer.config
    batch = current_batch(trainer, generator, step)
    cond, a = trainer.cond(batch["idx"]), kernel_noise(trainer)
    total, clipped = 0.0, 0.0
    for i in batch["steps"]:
        g = chain.propose(trainer.process, batch["states"][i], i, cond, noise_level=a, trace=trainer.trace).kernel
        log_prob = kernels.log_prob(g, batch["states"][i + 1], reduce="mean")  # (B,)
        old, ref = batch["log_probs"][i], batch["ref_log_probs"][i]
        loss, _ = prdp_loss(reduced(log_prob, trainer), reduced(old, trainer), reduced(ref, trainer),
                            batch["rewards"], config.group_size, config.beta, batch["horizon"], config.clip_range)
        trainer.backward(loss / len(batch["steps"]))
        total += float(loss.detach()) / len(batch["steps"])
        ratio = (reduced(log_prob.detach(), trainer) - reduced(old, trainer)).exp()
        clipped += float(((ratio - 1).abs() > config.clip_range).float().mean()) / len(batch["steps"])
    return {"loss": total, "rewards": batch["rewards"], "eval_rewards": batch.get("eval_rewards"),
            "prompts": [trainer.prompts[j] for j in batch["idx"]], "clip_fraction": clipped}
