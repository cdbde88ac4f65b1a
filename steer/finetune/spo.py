"""SPO: step-by-step preference optimization (Liang et al. 2024, "Aesthetic Post-Training Diffusion Models
from Generic Preferences with Step-by-step Preference Optimization"; code RockeyCoss/SPO
``train_scripts/train_spo.py``, ``spo/custom_diffusers/multi_sample_pipeline.py``).

Preferences are made and used one denoising step at a time. From step ``start_step`` on, every step i of
a rollout draws k candidates x^1..x^k_{i+1} from the same x_i with the stochastic kernel (DDIM η = 1);
each candidate is scored by the reward of its x̂0, which the next step's denoiser call predicts anyway
(at the last step the candidates are the final samples, scored as such); the best and the worst form a
pair (x^w, x^l | x_i), kept when softmax(r_best, r_worst) differs by more than ``threshold``; and the
chain continues from a candidate drawn uniformly (the reference's ``denoise_idx``). Each pair is trained
with a DPO loss on the kernel's log-probs at its own step, against the frozen reference model:

    ρ = clamp(π_θ(x | x_i) / π_ref(x | x_i), 1 − ε, 1 + ε)   for x = x^w, x^l
    L = −log σ( β·log ρ^w − β·log ρ^l )

with log π the dimension-averaged Gaussian log-density (``kernels.log_prob(reduce="mean")``, the
reference's), classifier-free guidance in both the sampling and the trained kernels (``train.cfg``). A
winner and loser share x_i and so the kernel: one model and one reference call per trained step.

Defaults (``SPOConfig``, from ``configs/basic_config.py`` and the SD-1.5 config): k = 4, β = 10, ε = 0.1,
threshold 0.3, start step 4, η = 1, guided, 10 pairs per micro-batch, lr 6e-5. The ``spo`` preset adds the
reference's chain (20 steps, guidance 5), 10 prompts per rollout and LoRA rank 4, α = 4. The reference
model is the denoiser with the LoRA disabled (the reference deep-copies the UNet before adding its LoRA:
the same function). Logged: the loss, the implicit accuracy (share of pairs with β·log ρ^w > β·log ρ^l) and
``pairs`` per micro-batch.

Deviations: the paper ranks candidates with its step-aware preference model, which scores noisy
latents with the timestep; steer applies any reward to the candidates' x̂0 decoded (a plain image reward
judged at every noise level — the reference also feeds the decoded x̂0, plus the timestep). The threshold
acts on the reward's own scale (0.3 suits PickScore-like logits; set it for your reward, 0 keeps every
strictly ordered pair). A rollout's pairs fill a shuffled buffer that the following micro-batches consume
(the reference trains ceil(pairs / batch) optimizer steps per rollout: the same, the buffer survives a
resume); the pairs of a micro-batch are grouped by step (``Process.denoise`` takes one step index per
call). Steps whose kernel is deterministic (σ = 0, e.g. DDIM onto ᾱ = 1) are sampled once and not
trained. For flow models the kernel is the Flow-GRPO SDE (noise level a = 0.7), an extension.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from steer import chain, kernels, toolkit
from steer.finetune import lora
from steer.finetune.config import SPOConfig
from steer.finetune.trainer import Trainer, TrainResult
from steer.scoring import decode_and_score, score_latents

METHOD = "spo"
MAX_EMPTY_ROLLOUTS = 8  # rollouts in a row without a kept pair before the run stops with a hint


def spo(process, reward, prompts: Sequence[str], config: Optional[SPOConfig] = None, *, out_dir,
        resume: bool = False, overwrite: bool = False, callback: Optional[Callable] = None,
        accelerator=None, eval_reward=None) -> TrainResult:
    """SPO LoRA fine-tuning: step-wise candidate pairs ranked by ``reward``; returns the saved LoRA."""
    config = config or SPOConfig()
    if config.start_step >= process.num_steps:
        raise ValueError(f"start_step={config.start_step} leaves no step to train in a {process.num_steps}-step "
                         f"chain: lower start_step (--set start_step=...) or raise the steps")
    trainer = Trainer(process, reward, prompts, config, out_dir, method=METHOD, resume=resume, overwrite=overwrite,
                      accelerator=accelerator, callback=callback, eval_reward=eval_reward)
    return trainer.run(spo_step)


def noise_level(process, config: SPOConfig) -> float:
    """η = 1 (SPO) for diffusion, a = 0.7 for flow (``toolkit.STOCHASTIC``), unless set."""
    return toolkit.noise_level(process, METHOD, toolkit.STOCHASTIC if config.noise_level is None else config.noise_level)


def spo_loss(lp_w: Tensor, lp_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float,
             clip_range: float) -> tuple[Tensor, Tensor]:
    """(loss, inside term (B,)): −mean log σ(β·log ρ^w − β·log ρ^l), ρ = clamp(π_θ/π_ref, 1 − ε, 1 + ε)."""
    lo, hi = 1 - clip_range, 1 + clip_range
    rho_w = torch.exp(lp_w - ref_w).clamp(lo, hi)
    rho_l = torch.exp(lp_l - ref_l).clamp(lo, hi)
    inside = beta * (torch.log(rho_w) - torch.log(rho_l))
    return -F.logsigmoid(inside).mean(), inside


def best_and_worst(r: Tensor, k: int, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per prompt of rewards ``r`` (P·k,), prompt-major: the rows of the best and the worst candidate (P,)
    and whether the pair is kept, softmax(r_best, r_worst)[0] − [1] > threshold (P,) bool."""
    groups = r.reshape(-1, k).float()  # (P, k)
    best, worst = groups.argmax(dim=1), groups.argmin(dim=1)
    top = groups.gather(1, best[:, None])[:, 0]
    low = groups.gather(1, worst[:, None])[:, 0]
    p = torch.softmax(torch.stack([top, low]), dim=0)  # (2, P)
    base = torch.arange(groups.shape[0], device=r.device) * k
    return base + best, base + worst, (p[0] - p[1]) > threshold


@dataclass
class Rollout:
    """A rollout's kept pairs: parents x_i (N, ...), winners and losers x_{i+1} (N, ...), their step (N,) and
    prompt index (N,); ``rewards`` (P·k,) of the final candidates, ``images`` and ``prompts`` of them."""

    x: Tensor
    win: Tensor
    lose: Tensor
    step: Tensor
    idx: Tensor
    rewards: Tensor
    images: Tensor
    prompts: list


@torch.no_grad()
def rollout(trainer: Trainer, generator: torch.Generator) -> Rollout:
    """One rollout of P prompts, branching into k candidates at every stochastic step from ``start_step``."""
    from steer.finetune.denoising import conditional

    process, config = trainer.process, trainer.config
    k, level = config.samples_per_step, noise_level(process, config)
    idx = torch.as_tensor(trainer.pick_prompts(generator))  # (P,)
    cond = trainer.cond(idx.tolist()) if config.guided else conditional(trainer.cond(idx.tolist()))
    cond_k = cond.repeat(k)  # prompt-major (P·k)
    x = process.init_noise(len(idx), generator)  # (P, C, h, w)
    parent, kept = None, []  # parent: x_i of the k candidates now in x (P rows), when x holds candidates
    for i in range(process.num_steps):
        prop = chain.propose(process, x, i, cond if parent is None else cond_k, noise_level=level, trace=trainer.trace)
        if parent is not None:  # x: candidates drawn at step i − 1, judged by their x̂0; continue from a random one
            r = score_latents(process, trainer.reward, prop.pred.x0, cond_k.prompts, trace=trainer.trace,
                              method=METHOD, step=i)
            kept.append(_pairs(parent, x, r, i - 1, idx, k, config.threshold))
            rows = torch.arange(len(idx)) * k + torch.randint(k, (len(idx),), generator=generator)  # (P,)
            x, prop = x[rows.to(x.device)], prop.take(rows)
        branch = i >= config.start_step and not prop.kernel.deterministic
        parent = x if branch else None
        x = chain.sample(prop.repeat(k).kernel if branch else prop.kernel, generator)  # (P·k or P, C, h, w)
    prompts = cond_k.prompts if parent is not None else cond.prompts
    images, r = decode_and_score(process, trainer.reward, x, prompts, trace=trainer.trace, method=METHOD)
    if parent is not None:
        kept.append(_pairs(parent, x, r, process.num_steps - 1, idx, k, config.threshold))
    if not kept:
        raise ValueError(f"no step from start_step={config.start_step} has a stochastic kernel: lower start_step "
                         f"or raise noise_level")
    return Rollout(*(torch.cat([p[j] for p in kept]) for j in range(5)), rewards=r.float().cpu(), images=images,
                   prompts=list(prompts))


def _pairs(parent: Tensor, x: Tensor, r: Tensor, i: int, idx: Tensor, k: int, threshold: float) -> tuple:
    """The kept (x_i, x^w, x^l, step, prompt index) of one step's candidates."""
    win, lose, keep = best_and_worst(r, k, threshold)
    keep = keep.cpu()
    win, lose = win.cpu()[keep], lose.cpu()[keep]
    dev = x.device
    return (parent[keep.to(dev)], x[win.to(dev)], x[lose.to(dev)], torch.full((int(keep.sum()),), i),
            idx[keep])


def next_pairs(trainer: Trainer, generator: torch.Generator) -> tuple[dict, Optional[Tensor]]:
    """The next ``train_batch_size`` pairs of the buffer (a new rollout when it is spent) and the images of a
    rollout drawn now (None otherwise)."""
    buf, images = trainer.extra.get("spo_pairs"), None
    for _ in range(MAX_EMPTY_ROLLOUTS):
        if buf is not None and buf["pos"] < buf["x"].shape[0]:
            break
        out = rollout(trainer, generator)
        order = torch.randperm(out.x.shape[0], generator=generator)  # the reference shuffles a rollout's pairs
        buf = trainer.extra["spo_pairs"] = {
            "x": out.x[order], "win": out.win[order], "lose": out.lose[order], "step": out.step[order],
            "idx": out.idx[order], "rewards": out.rewards, "pos": 0,
            "eval_rewards": trainer.eval_scores(out.images, out.prompts)}
        images = out.images
    else:
        raise ValueError(f"{MAX_EMPTY_ROLLOUTS} rollouts kept no pair: the candidates' rewards never differ by "
                         f"threshold={trainer.config.threshold} after the softmax; lower threshold (0 keeps every "
                         f"strictly ordered pair)")
    s = slice(buf["pos"], buf["pos"] + trainer.config.train_batch_size)
    buf["pos"] = min(buf["pos"] + trainer.config.train_batch_size, buf["x"].shape[0])
    pairs = {key: buf[key][s] for key in ("x", "win", "lose", "step", "idx")}
    return {**pairs, "rewards": buf["rewards"], "eval_rewards": buf["eval_rewards"]}, images


def step_loss(trainer: Trainer, pairs: dict, rows: Tensor, i: int, level: float) -> tuple[Tensor, Tensor]:
    """SPO's loss (and inside term) of the pairs ``rows`` that share step ``i``: one model, one reference call."""
    from steer.finetune.denoising import conditional

    process = trainer.process
    cond = trainer.cond(pairs["idx"][rows].tolist())
    cond = cond if trainer.config.guided else conditional(cond)
    x = pairs["x"][rows]
    g = chain.propose(process, x, i, cond, noise_level=level, trace=trainer.trace).kernel
    with torch.no_grad(), lora.lora_disabled(process):
        g_ref = chain.propose(process, x, i, cond, noise_level=level, trace=trainer.trace).kernel
    win, lose = pairs["win"][rows], pairs["lose"][rows]
    lp = [kernels.log_prob(g, y, reduce="mean") for y in (win, lose)]  # (n,) each
    ref = [kernels.log_prob(g_ref, y, reduce="mean") for y in (win, lose)]
    return spo_loss(lp[0], lp[1], ref[0], ref[1], trainer.config.beta, trainer.config.clip_range)


def spo_step(trainer: Trainer, generator: torch.Generator, step: int) -> dict:
    """One micro-batch of pairs from the buffer, grouped by step; the loss averaged over pairs."""
    pairs, images = next_pairs(trainer, generator)
    level = noise_level(trainer.process, trainer.config)
    n = pairs["x"].shape[0]
    total, insides = 0.0, []
    for i in sorted(set(pairs["step"].tolist())):
        rows = (pairs["step"] == i).nonzero()[:, 0]
        loss, inside = step_loss(trainer, pairs, rows, i, level)
        trainer.backward(loss * len(rows) / n)
        total += float(loss.detach()) * len(rows) / n
        insides.append(inside.detach())
    inside = torch.cat(insides)
    return {"loss": total, "rewards": pairs["rewards"], "eval_rewards": pairs["eval_rewards"], "prompts": [trainer.prompts[j] for j in pairs["idx"].tolist()],
            "implicit_accuracy": float((inside > 0).float().mean()), "pairs": n,
            "images": images if images is not None and trainer.wants_images(step) else None}
