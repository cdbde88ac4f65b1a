"""Group-relative policy optimization on the chain's stochastic kernels: DDPO and Flow-GRPO.

- DDPO (Black et al. 2024, "Training Diffusion Models with Reinforcement Learning"): the denoising
  chain is an MDP whose policy is the DDIM kernel with η = 1; the PPO-clipped surrogate is taken on
  the ratio of per-step log-probs, averaged over dimensions, with clip range 1e-4 and advantages
  clipped to ±5.
- Flow-GRPO (Liu et al. 2025): for rectified-flow models the ODE is replaced by the SDE with the same
  marginals (``kernels.flow_sde``, noise level a = 0.7) so that each step has a density; advantages
  are normalized within each prompt's group of G samples (GRPO); optional KL to the reference model
  with β (Flow-GRPO uses β = 0.04; default here 0 as DDPO).

The samples are drawn with ``steer.kernels`` (the same kernels as search), storing x_i, x_{i+1}
and log p(x_{i+1} | x_i) at sampling time; training recomputes the kernel with the LoRA and takes
ratio = exp(log p_new − log p_old), which is exactly 1 on the first pass over a batch. The reward
is only evaluated, never differentiated, so ``jpeg`` and user callables work.

Options with their origin (presets in ``steer.finetune.presets`` set them as the references do):
``advantages`` (``group`` default; ``per_prompt`` DDPO's tracker; ``global_std`` Flow-GRPO's; see
``steer.finetune.advantages``), ``kl_scaling`` (``exact`` default: ‖Δμ‖²/(2·std²), the KL of the two
Gaussian kernels; ``flow_grpo``: ‖Δμ‖²/(2σ_t²), Flow-GRPO's, without the SDE step's |Δt| — so a β
means 1/|Δt| times less than under ``exact``), ``timestep_selection`` (``random`` subset, DDPO; ``first``
int(fraction·n) in order, Flow-GRPO, which with fraction 0.99 never trains the last step),
``detach_uncond`` (Flow-GRPO's current code detaches guidance's unconditional branch in training;
DDPO keeps both branches' gradients, as does the default).

Deviations: the int(``timestep_fraction`` · n) trained steps (at least one) are shared by the whole
batch, because ``Process.predict`` takes one step index per call (DDPO draws them per sample), and
are counted over the stochastic steps. The per-prompt / global statistics are this process' (the
references gather every GPU's rewards first). Steps whose kernel is deterministic (σ = 0, e.g. DDIM's last step onto ᾱ = 1 with
``set_alpha_to_one``) have no density and are not trained on. Note: a last stochastic step landing on
ᾱ ≈ 1 has σ ≈ sqrt(1 − ᾱ) ≈ 0.01, and its log-prob gradients (∝ 1/σ) then dominate the update with
noise; "trailing" timestep spacing avoids such a step (measured in the tests/fixtures/grey.py docstring). Each
optimizer step uses one micro-batch of P prompts × G samples; with
``inner_epochs = E`` a batch is reused for E consecutive optimizer steps (PPO reuse; the clip acts
from the second one).

The 2026 variants (Flow-GRPO-Fast, CPS, MixGRPO, GRPO-Guard, DanceGRPO, multi-reward advantages) are
options of the same loop; see ``steer.finetune.grpo_variants``.

Code names: ``group_size`` = G, ``clip_range`` = ε, ``kl_beta`` = β, ``adv_clip_max`` = A_max,
``noise_level`` = η (diffusion) or a (flow).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from steer import kernels, toolkit
from steer.finetune import grpo_variants as variants
from steer.finetune import lora
from steer.finetune.advantages import advantages, group_advantages, multi_reward_advantages  # noqa: F401
from steer.finetune.config import GRPOConfig
from steer.finetune.trainer import Trainer, TrainResult
from steer.scoring import decode_and_score


def grpo(process, reward, prompts: Sequence[str], config: Optional[GRPOConfig] = None, *, out_dir,
         resume: bool = False, overwrite: bool = False, callback: Optional[Callable] = None,
         accelerator=None, eval_reward=None) -> TrainResult:
    """DDPO (diffusion) / Flow-GRPO (flow) LoRA fine-tuning; returns the saved LoRA."""
    config = config or GRPOConfig()
    trainer = Trainer(process, reward, prompts, config, out_dir, method="grpo", resume=resume, overwrite=overwrite,
                      accelerator=accelerator, callback=callback, eval_reward=eval_reward)
    return trainer.run(grpo_step)


def noise_level(process, config: GRPOConfig) -> float:
    """η = 1 (DDPO) for diffusion, a = 0.7 (Flow-GRPO) for flow (``toolkit.STOCHASTIC``), unless set."""
    return toolkit.noise_level(process, "grpo", toolkit.STOCHASTIC if config.noise_level is None else config.noise_level)


@torch.no_grad()
def sample_batch(trainer: Trainer, generator: torch.Generator, step: int = 0) -> dict:
    """Draw P prompts × G samples with the stochastic kernel, storing states and old log-probs (and, for
    GRPO-Guard, the kernels' means); ``step`` places MixGRPO's progressive window."""
    process, config = trainer.process, trainer.config
    picked = trainer.pick_prompts(generator)
    idx = [i for i in picked for _ in range(config.group_size)]  # prompt-major
    cond = trainer.cond(idx)
    a = noise_level(process, config)
    window = variants.sde_window(config, process.num_steps, step, generator)
    x = variants.initial_noise(process, len(picked), config.group_size, config.shared_noise, generator)  # (B, C, h, w)
    means = [] if config.ratio_norm else None
    states, log_probs, stochastic = rollout(trainer, x, cond, a, generator, window=window, sde_type=config.sde_type,
                                            means=means)
    images, rewards = decode_and_score(process, trainer.reward, states[-1], cond.prompts, trace=trainer.trace,
                                       method="grpo")
    batch = {"idx": idx, "states": states, "log_probs": log_probs,  # (S+1, B, ...), (S, B)
             "rewards": rewards, "advantages": batch_advantages(trainer, states[-1], cond.prompts, images, rewards),
             "eval_rewards": trainer.eval_scores(images, cond.prompts), "images": images,
             "steps": stochastic if window is not None else train_steps(stochastic, config, generator)}
    if config.ratio_norm:
        batch["means"] = torch.stack(means)  # (S, B, ...)
    return batch


@torch.no_grad()
def rollout(trainer: Trainer, x: Tensor, cond, a: float, generator: torch.Generator, *, window=None,
            sde_type: str = "sde", means: Optional[list] = None) -> tuple[Tensor, Tensor, list[int]]:
    """Run the chain from x_T (B, ...) with the stochastic kernel (noise ``a``; only inside ``window`` when given,
    the ODE elsewhere; ``sde_type`` as ``kernels.transition``): the states (S+1, B, ...), the log-probs
    log p(x_{i+1} | x_i) (S, B), and the steps that have a density; ``means`` (a list) gets each kernel's mean."""
    states, log_probs, stochastic = [x], [], []
    for i in range(trainer.process.num_steps):
        pred = trainer.process.predict(x, i, cond, trace=trainer.trace)
        g = variants.kernel(trainer.process, i, x, pred, variants.step_noise(window, i, a), sde_type)
        x = kernels.sample(g, generator)
        if g.deterministic:  # an ODE step, or DDIM's last step onto ᾱ = 1: no density, not trained
            log_probs.append(torch.zeros(x.shape[0], device=x.device))  # (B,) placeholder, never used
        else:
            log_probs.append(variants.step_log_prob(g, x, sde_type))  # (B,)
            stochastic.append(i)
        if means is not None:
            means.append(g.mean)
        states.append(x)
    if not stochastic:
        raise ValueError(f"every step of this chain is deterministic, so {trainer.method} has no log-probs to train; "
                         f"raise noise_level, sde_window_size or num_inference_steps")
    return torch.stack(states), torch.stack(log_probs), stochastic


def batch_advantages(trainer: Trainer, x, prompts, images, rewards):
    """The advantages of a batch: of the (summed) reward, or per reward term then weighted (``multi_reward``)."""
    config = trainer.config
    if config.multi_reward == "advantages":
        terms = (variants.score_terms(trainer.process, trainer.reward, x, prompts, trainer.trace, images)  # (K, B)
                 if getattr(trainer.reward, "terms", None) else rewards.float().cpu()[None])  # one reward: no rescoring
        return multi_reward_advantages(config, terms, variants.reward_terms(trainer.reward)[1], list(prompts))
    history = trainer.extra.setdefault("reward_history", {})  # per_prompt: each prompt's last rewards (checkpointed)
    return advantages(config, rewards.cpu(), list(prompts), history)


def train_steps(stochastic: list[int], config: GRPOConfig, generator: torch.Generator) -> list[int]:
    """The int(timestep_fraction · n) steps (at least 1) of the n stochastic ones a batch trains on: the
    first ones in order (Flow-GRPO), a random subset (DDPO), or a random subset of all but the last one
    (DanceGRPO, n − 1 candidates)."""
    if config.timestep_selection == "random_but_last" and len(stochastic) > 1:
        stochastic = stochastic[:-1]
    T = max(1, int(config.timestep_fraction * len(stochastic)))
    if config.timestep_selection == "first":
        return stochastic[:T]
    return [stochastic[j] for j in torch.randperm(len(stochastic), generator=generator)[:T].tolist()]


def clipped_surrogate(adv: Tensor, ratio: Tensor, clip_range: float) -> Tensor:
    """PPO's clipped objective as a loss (DDPO / Flow-GRPO): mean(max(−A·ρ, −A·clamp(ρ, 1 − ε, 1 + ε)))."""
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()


def policy_loss(trainer: Trainer, batch: dict, i: int, cond) -> tuple[Tensor, dict]:
    """PPO-clipped surrogate (plus β·KL) at step ``i`` of a stored batch."""
    process, config = trainer.process, trainer.config
    a = noise_level(process, config)
    x, x_next = batch["states"][i], batch["states"][i + 1]
    if config.detach_uncond:
        cond = replace(cond, detach_uncond=True)
    pred = process.predict(x, i, cond, trace=trainer.trace)
    g = variants.kernel(process, i, x, pred, a, config.sde_type)
    log_ratio = variants.step_log_prob(g, x_next, config.sde_type) - batch["log_probs"][i]  # (B,)
    if config.ratio_norm:  # GRPO-Guard
        log_ratio = variants.guard_log_ratio(log_ratio, 0.0, g.mean, batch["means"][i], g.std)
    ratio = torch.exp(log_ratio)  # (B,)
    adv = batch["advantages"].to(ratio.device)
    eps = config.clip_range
    loss = clipped_surrogate(adv, ratio, eps)
    if config.grad_balance:  # SAGE-GRPO: the policy term of step i rescaled by median(g) / g_i
        loss = loss * variants.grad_balance_scales(process.schedule, a, config.sde_type)[i]
    info = {"ratio": ratio.detach(), "clip_fraction": float(((ratio - 1).abs() > eps).float().mean())}
    if config.kl_beta > 0:
        kl = kl_to_reference(trainer, x, i, cond, g, a)
        loss = loss + config.kl_beta * kl.mean()
        info["kl"] = float(kl.mean().detach())
    return loss, info


def kl_to_reference(trainer: Trainer, x: Tensor, i: int, cond, g, a: float) -> Tensor:
    """KL(π_θ(·|x_i) ‖ π_ref(·|x_i)) of two Gaussians with the same std, averaged over dimensions:
    ‖μ_θ − μ_ref‖² / (2·v) with v from ``kl_variance``. The reference is the model with the LoRA disabled."""
    process = trainer.process
    with torch.no_grad(), lora.lora_disabled(process):
        ref = variants.kernel(process, i, x, process.predict(x, i, cond), a, trainer.config.sde_type)
    v = kl_variance(process.schedule, i, g.std, trainer.config.kl_scaling)
    return ((g.mean - ref.mean) ** 2).flatten(1).mean(dim=1) / (2 * v)  # (B,)


def kl_variance(schedule, i: int, std: Tensor, scaling: str) -> Tensor:
    """The variance the KL divides by: the kernel's std² (``exact``: the Gaussians' KL), or for
    ``flow_grpo`` on a flow SDE step σ_t² = std² / |Δt| (Flow-GRPO divides by its ``std_dev_t²``,
    which lacks the step's |Δt|; its β = 0.04 is therefore 1/|Δt| times weaker than the exact KL's)."""
    v = std.float() ** 2
    if scaling == "flow_grpo" and schedule.kind == "flow":
        v = v / (schedule.sigmas[i] - schedule.sigmas[i + 1]).abs()
    return v


def grpo_step(trainer: Trainer, generator: torch.Generator, step: int) -> dict:
    """One optimizer step's micro-batch: sample (or reuse, for inner epochs) and accumulate the loss."""
    config = trainer.config
    batch_id = step // config.inner_epochs
    batches = trainer.extra.setdefault("grpo_batches", {})  # micro index -> batch (kept in checkpoints)
    cached = batches.get(trainer.micro)
    if cached is None or cached["id"] != batch_id:
        sampled = sample_batch(trainer, generator, step)
        images = sampled.pop("images")  # not kept in the batch: it is checkpointed
        cached = batches[trainer.micro] = {"id": batch_id, **sampled}
    else:
        images = None  # a reused batch (inner epochs): its images went to the trackers when it was drawn
    cond = trainer.cond(cached["idx"])
    total, infos = 0.0, []
    for i in cached["steps"]:
        loss, info = policy_loss(trainer, cached, i, cond)
        trainer.backward(loss / len(cached["steps"]))
        total += float(loss.detach()) / len(cached["steps"])
        infos.append(info)
    kls = [f["kl"] for f in infos if "kl" in f]
    return {"loss": total, "rewards": cached["rewards"], "eval_rewards": cached.get("eval_rewards"),
            "prompts": [trainer.prompts[j] for j in cached["idx"]],
            "clip_fraction": sum(f["clip_fraction"] for f in infos) / len(infos),
            "kl": sum(kls) / len(kls) if kls else None, "first_ratio": infos[0]["ratio"],
            "images": images if images is not None and trainer.wants_images(step) else None}
