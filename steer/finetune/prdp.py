"""PRDP (Deng et al. 2024, "PRDP: Proximal Reward Difference Prediction for Large-Scale Reward
Finetuning of Diffusion Models", CVPR 2024).

Reward Difference Prediction (RDP): the KL-regularized reward objective's optimum satisfies
r(x) = β·log π*(x)/π_ref(x) + β·log Z(c), so the difference of two samples' rewards is predicted,
Z cancelling, by the difference of their trajectory log-ratios. RDP regresses it:

    L = E[ ( r(x^a_0) − r(x^b_0) − r̂_θ )² ],   r̂_θ = β·Σ_t [ log ρ^a_t − log ρ^b_t ],
    ρ_t = π_θ(x_{t+1} | x_t, c) / π_old(x_{t+1} | x_t, c),

over pairs (a, b) of the same prompt's samples. PRDP makes it online and proximal: π_old is the
policy that drew the batch (the reference of each iteration, so ρ = 1 on the first pass), the sum over
the chain is estimated per step by T times one step's term (T = the chain's stochastic steps), and, as
PPO does for its surrogate, the ratio is clipped to [1 − ε, 1 + ε] and the larger of the unclipped and
clipped squared errors is taken:

    L_t = mean over pairs of max( (Δr − β·T·(log ρ^a_t − log ρ^b_t))²,
                                  (Δr − β·T·(log clip(ρ^a_t) − log clip(ρ^b_t)))² ).

Within each group of K samples of a prompt every one of the K(K − 1)/2 pairs is used. One optimizer
step averages L_t over the trained steps; with ``inner_epochs = E`` a batch serves E consecutive
optimizer steps (the clip acts from the second one). Sampling and the per-step log-probs (averaged
over dimensions) are grpo's (``grpo.rollout``: DDIM η = 1 / the flow SDE); the reward is only
evaluated, never differentiated.

Defaults: K = 8, β = 1, ε = 1e-4 (DDPO's clip range), every step trained, one inner epoch.
Deviations, declared: PRDP has no public code and the paper's text could not be read here, so the
exact form of the clip (on the ratio, as PPO / D3PO; the paper may clip the log-ratio), the factor T,
dimension-averaged (not summed) log-probs and the default K, β, ε are this module's reading of the
method, not checked against the authors' settings (the preset ``prdp`` says so in its origins).
Rewards enter raw (no per-prompt normalization). The trained steps are shared by a batch.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from steer import chain, kernels
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


def prdp_loss(log_prob: Tensor, old_log_prob: Tensor, rewards: Tensor, group_size: int, beta: float, horizon: int,
              clip_range: float) -> tuple[Tensor, Tensor]:
    """(loss, predicted differences (pairs,)): mean of max((Δr − r̂)², (Δr − r̂_clip)²), r̂ = β·T·Δ log ρ."""
    a, b = group_pairs(log_prob.shape[0], group_size)
    rho = log_prob - old_log_prob  # (B,) log ρ
    rho_clip = clipped_log_ratio(log_prob, old_log_prob, clip_range)  # (B,)
    target = (rewards[a] - rewards[b]).to(log_prob.device, log_prob.dtype)
    predicted = beta * horizon * (rho[a] - rho[b])
    predicted_clip = beta * horizon * (rho_clip[a] - rho_clip[b])
    return torch.maximum((target - predicted) ** 2, (target - predicted_clip) ** 2).mean(), predicted


@torch.no_grad()
def sample_groups(trainer: Trainer, generator: torch.Generator) -> dict:
    """P prompts × K trajectories (prompt-major) with their states, old log-probs and rewards."""
    process, config = trainer.process, trainer.config
    idx = [i for i in trainer.pick_prompts(generator) for _ in range(config.group_size)]
    cond = trainer.cond(idx)
    states, log_probs, stochastic = rollout(trainer, process.init_noise(len(idx), generator), cond,
                                            kernel_noise(trainer), generator)
    images, rewards = decode_and_score(process, trainer.reward, states[-1], cond.prompts, trace=trainer.trace,
                                       method=METHOD)
    return {"idx": idx, "states": states, "log_probs": log_probs, "rewards": rewards.float().cpu(),
            "horizon": len(stochastic), "steps": train_steps(stochastic, config, generator),
            "eval_rewards": trainer.eval_scores(images, cond.prompts)}


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
    cond = trainer.cond(batch["idx"])
    a = kernel_noise(trainer)
    total, clipped = 0.0, 0.0
    for i in batch["steps"]:
        x, x_next = batch["states"][i], batch["states"][i + 1]
        g = chain.propose(trainer.process, x, i, cond, noise_level=a, trace=trainer.trace).kernel
        log_prob = kernels.log_prob(g, x_next, reduce="mean")  # (B,)
        loss, _ = prdp_loss(log_prob, batch["log_probs"][i], batch["rewards"], config.group_size, config.beta,
                            batch["horizon"], config.clip_range)
        trainer.backward(loss / len(batch["steps"]))
        total += float(loss.detach()) / len(batch["steps"])
        ratio = (log_prob.detach() - batch["log_probs"][i]).exp()
        clipped += float(((ratio - 1).abs() > config.clip_range).float().mean()) / len(batch["steps"])
    return {"loss": total, "rewards": batch["rewards"], "eval_rewards": batch.get("eval_rewards"),
            "prompts": [trainer.prompts[j] for j in batch["idx"]], "clip_fraction": clipped}
