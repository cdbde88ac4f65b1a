"""Reward backpropagation through the sampling chain: DRaFT-K, DRaFT-LV and AlignProp.

- DRaFT-K (Clark et al. 2024, "Directly Fine-Tuning Diffusion Models on Differentiable Rewards"):
  sample the chain without gradients up to the last K steps, run those K steps with gradients and
  maximize r(decode(x0)); the input of step S−K is detached. Default K = 1 (the paper's best
  trade-off), deterministic DDIM (η = 0) as in the paper.
- DRaFT-LV (same paper, §4.2): K = 1 with lower variance — the final sample x0 (no gradients) is
  re-noised n times to the last step's level, x_{S−1} = add_noise(x0, ε_j), each copy is denoised by
  the last step with gradients, and the rewards of the n copies are averaged. Default n = 2.
- AlignProp (Prabhudesai et al. 2023, "Aligning Text-to-Image Diffusion Models with Reward
  Backpropagation"): randomized truncation — each update the steps before a detach point D run
  without gradients and the last K = S − D with them. D is drawn as the official (TRL-based) code's
  default ``backprop_strategy="gaussian"``: D = int(N(42, 5)) on 50 steps (here N(0.84·S, 0.1·S),
  the same on 50), redrawn until 1 <= D < S, so K ≈ 9 on average and never the full chain;
  ``truncation="uniform"`` draws D in 0..S−1 (its ``uniform`` strategy; K in 1..S). Their memory
  savings come from LoRA plus gradient checkpointing (``gradient_checkpointing=True``). Deviation
  from the earlier steer (and from the first AlignProp code, which redrew D per step): D is drawn
  once per update.

Loss = −mean reward (the reward must be differentiable; weighted sums of differentiable rewards are).
Code names: ``k`` = K, ``lv_copies`` = n, ``S`` = number of chain steps.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from steer import chain, kernels
from steer.finetune.config import DraftConfig
from steer.finetune.trainer import Trainer, TrainResult
from steer.scoring import decode_and_score


def draft(process, reward, prompts: Sequence[str], config: Optional[DraftConfig] = None, *, out_dir,
          resume: bool = False, overwrite: bool = False, callback: Optional[Callable] = None,
          accelerator=None, eval_reward=None) -> TrainResult:
    """DRaFT-K / DRaFT-LV / AlignProp LoRA fine-tuning (``config.variant``); returns the saved LoRA."""
    config = config or DraftConfig()
    check_differentiable(reward)
    if config.variant == "draft" and config.k > process.num_steps:
        raise ValueError(f"k = {config.k} exceeds the chain's {process.num_steps} steps; lower k or raise "
                         f"num_inference_steps")
    trainer = Trainer(process, reward, prompts, config, out_dir, method="draft", resume=resume, overwrite=overwrite,
                      accelerator=accelerator, callback=callback, eval_reward=eval_reward)
    return trainer.run(draft_step)


def check_differentiable(reward) -> None:
    if not getattr(reward, "differentiable", False):
        raise ValueError(f"reward {getattr(reward, 'name', reward)!r} is not differentiable, which reward backprop "
                         f"(draft) needs; use method grpo, or a differentiable reward such as hps, clip, pickscore")


def truncation(config: DraftConfig, num_steps: int, generator: torch.Generator) -> int:
    """K, the final steps gradients flow through, for this update: fixed (DRaFT-K), 1 (DRaFT-LV), or
    S − D for AlignProp's detach point D (``alignprop_detach``)."""
    if config.variant == "lv":
        return 1
    if config.variant == "alignprop":
        return num_steps - alignprop_detach(config, num_steps, generator)
    return config.k


def alignprop_detach(config: DraftConfig, num_steps: int, generator: torch.Generator, tries: int = 1000) -> int:
    """AlignProp's truncation: the steps before D run without gradients. ``gaussian`` (its default):
    D = int(N(mean·S, std·S)) (truncated toward zero), redrawn until 1 <= D < S; ``uniform``: D in 0..S−1."""
    S = num_steps
    if config.truncation == "uniform" or S == 1:
        return int(torch.randint(0, S, (1,), generator=generator))
    for _ in range(tries):
        d = int(config.truncation_mean * S + config.truncation_std * S * float(torch.randn((1,), generator=generator)))
        if 1 <= d < S:
            return d
    raise ValueError(f"alignprop: no detach point in 1..{S - 1} from N({config.truncation_mean}·S, "
                     f"{config.truncation_std}·S) in {tries} draws; raise truncation_std or num_inference_steps")


def draft_step(trainer: Trainer, generator: torch.Generator, step: int) -> dict:
    """One micro-batch: sample, backprop −reward through the last K steps."""
    process, config = trainer.process, trainer.config
    idx = trainer.pick_prompts(generator)
    cond = trainer.cond(idx)
    S = process.num_steps
    K = truncation(config, S, generator)
    x = process.init_noise(len(idx), generator)  # (B, C, h, w)
    with torch.no_grad():
        x = chain.run(process, x, cond, start=0, end=S - K, noise_level=config.noise_level,
                      generator=generator, trace=trainer.trace)
    if config.variant == "lv":
        x0, prompts = lv_copies(trainer, x.detach(), cond, generator)
    else:
        x0 = chain.run(process, x.detach(), cond, start=S - K, end=S, noise_level=config.noise_level,
                       generator=generator, trace=trainer.trace)
        prompts = list(cond.prompts)
    images, rewards = decode_and_score(process, trainer.reward, x0, prompts, trace=trainer.trace, method="draft",
                                       grad=True)
    loss = -rewards.mean()
    trainer.backward(loss)
    return {"loss": float(loss.detach()), "rewards": rewards.detach(), "prompts": prompts, "k": K,
            "eval_rewards": trainer.eval_scores(images, prompts)}


def lv_copies(trainer: Trainer, x_last, cond, generator: torch.Generator):
    """DRaFT-LV: finish the chain without gradients, re-noise x0 n times to step S−1, denoise each copy
    with gradients. Returns the n·B final latents (copy-major) and their prompts."""
    process, n = trainer.process, trainer.config.lv_copies
    S = process.num_steps
    with torch.no_grad():
        x0 = chain.run(process, x_last, cond, start=S - 1, end=S, noise_level=trainer.config.noise_level,
                       generator=generator, trace=trainer.trace)  # (B, C, h, w)
    x0 = x0.repeat(n, *([1] * (x0.ndim - 1)))  # (n·B, C, h, w)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_noisy = kernels.add_noise(process.schedule, S - 1, x0, noise)
    cond_n = cond.index(list(range(len(cond))) * n)
    x_final, _, _ = chain.step(process, x_noisy, S - 1, cond_n, noise_level=trainer.config.noise_level,
                               generator=generator, trace=trainer.trace)
    return x_final, list(cond_n.prompts)
