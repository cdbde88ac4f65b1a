"""Distil inference-time steering into LoRA weights, RAFT-style.

RAFT (Dong et al. 2023, "RAFT: Reward rAnked FineTuning for Generative Foundation Model
Alignment"): draw samples, keep the best by reward, fine-tune on them with the model's ordinary
likelihood loss, optionally repeat with the updated model (online rounds). Here the samples are
drawn with any steering method by name (``fk``, ``dts_star``, ``best_of_n``, ``reno``, resolved by
``steer.catalog.resolve_method``), so the LoRA learns to produce what steering finds without the search
cost. The loss is the model's own denoising objective: x_i = ``kernels.add_noise``(x0, ε) at a random
chain step i, ‖f_θ(x_i, i, c) − ``kernels.training_target``‖² (ε, v or flow velocity), on the
conditional branch (no guidance).

Defaults: one round, ``samples_per_prompt`` = 1 steered sample per prompt, ``top_fraction`` = 1,
``loss_space="model"`` (the ε / v / flow-velocity loss above, as RAFT fine-tunes with the model's own
objective). ``loss_space="x0"`` (ours) takes the same squared error on the implied clean sample x̂0
instead, which for ε-prediction weights step i by (1−ᾱ_i)/ᾱ_i = 1/SNR: measured on the grey world
(``tests.fixtures.grey``, best-of-8 kept samples 0.07 brighter than the base), 40 steps moved fresh samples
+0.04 / −0.04 for the reward / its negation with ``x0`` and about 0 with ``model``, because what the
selection changes (global brightness, layout) is decided at the noisiest steps, which the ε-loss
barely weights. Deviations: training timesteps are the chain's S steps (where the sampler uses the model), one step
index per micro-batch (``Process.denoise`` takes one index per call).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Optional, Sequence

import torch

from steer.finetune.config import DistillConfig
from steer.finetune.denoising import denoising_errors
from steer.finetune.trainer import Trainer, TrainResult, step_generator
from steer.types import Cond


def distill(process, reward, prompts: Sequence[str], config: Optional[DistillConfig] = None, *, out_dir,
            resume: bool = False, overwrite: bool = False, callback: Optional[Callable] = None,
            accelerator=None, eval_reward=None) -> TrainResult:
    """Steer, keep the top samples, fine-tune a LoRA on them with the denoising loss; returns the LoRA."""
    return train_on_steered(process, reward, prompts, config or DistillConfig(), distill_step, out_dir=out_dir,
                            resume=resume, overwrite=overwrite, callback=callback, accelerator=accelerator,
                            eval_reward=eval_reward)


def train_on_steered(process, reward, prompts, config: DistillConfig, step_fn: Callable, **run) -> TrainResult:
    """The trainer of a method that fits steered samples (``config.method``), run with ``step_fn``."""
    from steer.catalog import check_options, resolve_method

    method = resolve_method(config.steer_method)
    check_options(method, dict(config.steer_options), config.steer_method)
    if config.max_steps != config.steps_per_round * config.rounds:
        config = replace(config, max_steps=config.steps_per_round * config.rounds)
    out_dir = run.pop("out_dir")
    trainer = Trainer(process, reward, prompts, config, out_dir, method=config.method, **run)
    trainer.steer_fn = method
    return trainer.run(step_fn)


def steered_samples(trainer: Trainer, round_index: int) -> dict:
    """Round ``round_index``: ``samples_per_prompt`` steered samples per prompt (split over ranks by
    seed), the top ``top_fraction`` of each prompt's samples kept. Returns final latents and prompt indices."""
    config = trainer.config
    drawn = draw(trainer, trainer.steer_fn, dict(config.steer_options), config.samples_per_prompt,
                 10_000_000 + round_index * 1000)
    keep = keep_top(drawn["rewards"], torch.tensor(drawn["idx"]), config.top_fraction)
    data = {"latents": drawn["latents"][keep], "idx": [drawn["idx"][k] for k in keep.tolist()],
            "rewards": drawn["rewards"][keep]}
    if trainer.eval_reward is not None:  # the held-out reward of the kept (trained-on) samples
        data["eval_rewards"] = drawn["eval_rewards"][keep]
    return data


def draw(trainer: Trainer, method: Callable, options: dict, reps: int, salt: int) -> dict:
    """``reps`` samples of every prompt from steering ``method`` (the current LoRA's model), in chunks of
    ``prompts_per_step`` prompts; repetition ``r`` draws from ``step_generator(seed, salt + r, rank)``.
    Returns final latents (N, ...) on the CPU, their prompt indices (rep-major), rewards (N,) and, with an
    ``eval_reward``, its scores (N,). NFE and reward calls are counted into the trainer's trace."""
    config, process = trainer.config, trainer.process
    latents, rewards, owners, held_out = [], [], [], []
    for rep in range(reps):
        generator = step_generator(config.seed, salt + rep, trainer.rank)
        for start in range(0, len(trainer.prompts), config.prompts_per_step):
            chunk = list(range(start, min(start + config.prompts_per_step, len(trainer.prompts))))
            result = method(process, trainer.reward, [trainer.prompts[i] for i in chunk], generator=generator,
                            **options)
            latents.append(final_latents(trainer, result))
            rewards.append(result.rewards.float().cpu())
            held_out.append(trainer.eval_scores(result.images, [trainer.prompts[i] for i in chunk]))
            owners += chunk
            trainer.trace.add_nfe(result.trace.nfe)
            trainer.trace.add_reward_calls(result.trace.reward_calls)
    out = {"latents": torch.cat(latents).cpu(), "idx": owners, "rewards": torch.cat(rewards)}
    if trainer.eval_reward is not None:
        out["eval_rewards"] = torch.cat(held_out)
    return out


def final_latents(trainer: Trainer, result) -> torch.Tensor:
    """The final latents the steering method selected (``Result.latents`` decode to its images)."""
    if result.latents is None:
        raise ValueError(f"steering method {trainer.config.steer_method!r} returned no latents to train on; "
                         f"use fk, dts_star, best_of_n or reno")
    return result.latents.detach().float()


def keep_top(rewards: torch.Tensor, owners: torch.Tensor, fraction: float) -> torch.Tensor:
    """The rows (sorted) of each prompt's ceil(fraction·n) highest-reward samples (RAFT's ranking within a prompt)."""
    keep = []
    for p in owners.unique().tolist():
        rows = torch.nonzero(owners == p).flatten()
        k = max(1, math.ceil(fraction * len(rows)))
        keep += rows[rewards[rows].argsort(descending=True)[:k]].tolist()
    return torch.tensor(sorted(keep))


def denoising_loss(trainer: Trainer, x0: torch.Tensor, cond: Cond, generator: torch.Generator) -> torch.Tensor:
    """‖f_θ(x_i, i, c) − target‖² at a random chain step i, x_i = add_noise(x0, ε) (``denoising.denoising_errors``
    of the model alone, averaged over the micro-batch)."""
    return denoising_errors(trainer, x0, cond, generator, reference=False)[0].mean()


def distill_step(trainer: Trainer, generator: torch.Generator, step: int, loss_fn: Callable = None) -> dict:
    """Sample a new steered set at the start of each round, then one micro-batch of the denoising loss
    (or of ``loss_fn(trainer, x0, cond, generator)``, e.g. SOAR's)."""
    config = trainer.config
    round_index = step // config.steps_per_round
    data = trainer.extra.get("distill_data")
    if data is None or data["round"] != round_index:
        data = trainer.extra["distill_data"] = {"round": round_index, **steered_samples(trainer, round_index)}
    rows = torch.randint(len(data["idx"]), (min(config.train_batch_size, len(data["idx"])),), generator=generator)
    x0 = data["latents"][rows].to(trainer.process.device)
    idx = [data["idx"][r] for r in rows.tolist()]
    loss = (loss_fn or denoising_loss)(trainer, x0, trainer.cond(idx), generator)
    trainer.backward(loss)
    return {"loss": float(loss.detach()), "rewards": data["rewards"], "eval_rewards": data.get("eval_rewards"),
            "prompts": [trainer.prompts[j] for j in idx]}
