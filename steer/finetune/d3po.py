"""D3PO (Yang et al. 2024, "Using Human Feedback to Fine-tune Diffusion Models without Any Reward
Model"; reference code yk7333/d3po ``scripts/train_d3po.py``, ``config/base.py``).

DPO on the denoising chain read as a multi-step MDP: from one prompt c and ONE initial noise x_T the
current model samples two trajectories σ^a, σ^b with the stochastic kernel (DDIM η = 1; for flow
models steer's extension uses the Flow-GRPO SDE, a = 0.7); a preference (here: any reward, the higher wins; the paper's human labels) says
which is better; and at every step t both trajectories' transitions are pushed apart against a frozen
reference π_ref with the DPO loss

    L_t = −log σ( β · [ c^a · log ρ^a_t + c^b · log ρ^b_t ] ),
    ρ_t = clip( π_θ(x_{t+1} | x_t, c) / π_ref(x_{t+1} | x_t, c), 1 − ε, 1 + ε ),

with (c^a, c^b) = (+1, −1) when σ^a is preferred, (−1, +1) when σ^b is, and (0, 0) for a tie (the
reference's ``compare``; a tie gives log 2 and no gradient). The log-probs are the kernel's Gaussian
log-densities averaged over dimensions (``kernels.log_prob(reduce="mean")``, as the reference's
``ddim_step_with_logprob`` from ddpo-pytorch). The clip bounds the ratio (the paper's bound on the
Q-values): outside [1 − ε, 1 + ε] a transition gets no gradient. One optimizer step averages L_t over
the trained steps (the reference accumulates gradients over its ``num_train_timesteps`` and steps once).

The reference model is the denoiser with the LoRA disabled (the reference deep-copies the initial
UNet), run under ``torch.no_grad()``. Training evaluates the kernel at the process' guidance scale,
as sampling did (the reference's ``train.cfg = True``, both branches with gradients).

Defaults (``config/base.py``): β = 0.1 (``train.beta``), ε = 0.1 (``train.eps``), η = 1
(``sample.eta``), every step trained (``timestep_fraction`` 1.0, a random order), learning rate 3e-5;
the preset ``d3po`` adds 20 steps at guidance 5 and one pair per update (``train.batch_size = 1``).
Logged: the loss, the share of pairs whose preferred trajectory has the larger clipped log-ratio
(``implicit_accuracy``), the share of tied pairs (``tie_share``) and of clipped ratios (``clip_fraction``).

Deviations: each optimizer step samples its own ``prompts_per_step`` pairs and trains on them at once
(the reference samples 10 × 2 pairs per epoch, then makes one update per pair); the trained steps are
shared by the batch (the reference permutes them per sample; with ``timestep_fraction = 1`` all are
trained either way). Steps whose kernel is deterministic have no density and are not trained. The
preference comes from a reward (any: a verifier such as ``shapes-check`` gives pass / fail, ties
carry no gradient); a dataset or steered pairs cannot be used: the loss needs the current model's own
trajectories and their per-step log-probs.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from steer import chain, kernels, toolkit
from steer.finetune import lora
from steer.finetune.config import D3POConfig
from steer.finetune.grpo import rollout, train_steps
from steer.finetune.trainer import Trainer, TrainResult
from steer.scoring import decode_and_score

METHOD = D3POConfig.method  # "d3po"


def d3po(process, reward, prompts: Sequence[str], config: Optional[D3POConfig] = None, *, out_dir,
         resume: bool = False, overwrite: bool = False, callback: Optional[Callable] = None,
         accelerator=None, eval_reward=None) -> TrainResult:
    """D3PO LoRA fine-tuning: pairs of the model's own trajectories from one x_T, preferred by ``reward``."""
    config = config or D3POConfig()
    trainer = Trainer(process, reward, prompts, config, out_dir, method=METHOD, resume=resume, overwrite=overwrite,
                      accelerator=accelerator, callback=callback, eval_reward=eval_reward)
    return trainer.run(d3po_step)


def kernel_noise(trainer: Trainer) -> float:
    """η = 1 for diffusion, a = 0.7 for flow (``toolkit.STOCHASTIC``), unless ``noise_level`` is set."""
    level = trainer.config.noise_level
    return toolkit.noise_level(trainer.process, trainer.method, toolkit.STOCHASTIC if level is None else level)


def preference(rewards_a: Tensor, rewards_b: Tensor) -> Tensor:
    """(c^a, c^b) per pair (P, 2): (+1, −1) if a has the higher reward, (−1, +1) if b, (0, 0) on a tie."""
    c = torch.zeros(rewards_a.shape[0], 2)
    c[rewards_a > rewards_b] = torch.tensor([1.0, -1.0])
    c[rewards_b > rewards_a] = torch.tensor([-1.0, 1.0])
    return c


def clipped_log_ratio(log_prob: Tensor, ref_log_prob: Tensor, clip_range: float) -> Tensor:
    """log clip(exp(log π_θ − log π_ref), 1 − ε, 1 + ε), elementwise."""
    return torch.log(torch.exp(log_prob - ref_log_prob).clamp(1 - clip_range, 1 + clip_range))


def d3po_loss(log_prob_a: Tensor, ref_a: Tensor, log_prob_b: Tensor, ref_b: Tensor, c: Tensor, beta: float,
              clip_range: float) -> tuple[Tensor, Tensor]:
    """(loss, inside term (P,)): −mean log σ(β·(c^a·log ρ^a + c^b·log ρ^b)) with ρ the clipped ratios."""
    c = c.to(log_prob_a.device, log_prob_a.dtype)
    inside = beta * (clipped_log_ratio(log_prob_a, ref_a, clip_range) * c[:, 0]
                     + clipped_log_ratio(log_prob_b, ref_b, clip_range) * c[:, 1])
    return -F.logsigmoid(inside).mean(), inside


@torch.no_grad()
def sample_pairs(trainer: Trainer, generator: torch.Generator) -> dict:
    """P prompts × 2 trajectories sharing x_T: rows (a_0, b_0, a_1, b_1, ...), their states and rewards."""
    process, config = trainer.process, trainer.config
    idx = [i for i in trainer.pick_prompts(generator) for _ in range(2)]
    cond = trainer.cond(idx)
    x_T = process.init_noise(len(idx) // 2, generator).repeat_interleave(2, dim=0)  # (2P, C, h, w)
    states, _, stochastic = rollout(trainer, x_T, cond, kernel_noise(trainer), generator)
    images, rewards = decode_and_score(process, trainer.reward, states[-1], cond.prompts, trace=trainer.trace,
                                       method=METHOD)
    return {"idx": idx, "states": states, "rewards": rewards.cpu(), "images": images,
            "steps": train_steps(stochastic, config, generator)}


def step_log_probs(trainer: Trainer, states: Tensor, i: int, cond) -> tuple[Tensor, Tensor]:
    """log π_θ(x_{i+1} | x_i) with gradient and log π_ref (LoRA disabled, no gradient), both (2P,)."""
    process, a = trainer.process, kernel_noise(trainer)
    x, x_next = states[i], states[i + 1]
    g = chain.propose(process, x, i, cond, noise_level=a, trace=trainer.trace).kernel
    with torch.no_grad(), lora.lora_disabled(process):
        ref = chain.propose(process, x, i, cond, noise_level=a, trace=trainer.trace).kernel
    return kernels.log_prob(g, x_next, reduce="mean"), kernels.log_prob(ref, x_next, reduce="mean")


def d3po_step(trainer: Trainer, generator: torch.Generator, step: int) -> dict:
    """One micro-batch: sample P pairs, then the DPO loss at each trained step, averaged over the steps."""
    config = trainer.config
    batch = sample_pairs(trainer, generator)
    cond = trainer.cond(batch["idx"])
    c = preference(batch["rewards"][0::2], batch["rewards"][1::2])  # (P, 2)
    total, accurate, clipped = 0.0, 0.0, 0.0
    for i in batch["steps"]:
        log_prob, ref = step_log_probs(trainer, batch["states"], i, cond)
        loss, inside = d3po_loss(log_prob[0::2], ref[0::2], log_prob[1::2], ref[1::2], c, config.beta,
                                 config.clip_range)
        trainer.backward(loss / len(batch["steps"]))
        total += float(loss.detach()) / len(batch["steps"])
        accurate += float((inside.detach() > 0).float().mean()) / len(batch["steps"])
        clipped += float(((log_prob.detach() - ref).exp().sub(1).abs() > config.clip_range).float().mean())
    return {"loss": total, "rewards": batch["rewards"], "prompts": [trainer.prompts[j] for j in batch["idx"]],
            "eval_rewards": trainer.eval_scores(batch["images"], [trainer.prompts[j] for j in batch["idx"]]),
            "implicit_accuracy": accurate, "tie_share": float((c[:, 0] == 0).float().mean()),
            "clip_fraction": clipped / len(batch["steps"])}
