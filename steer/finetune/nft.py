"""DiffusionNFT: online reinforcement on the forward process (Zheng et al. 2025, "DiffusionNFT: Online
Diffusion Reinforcement with Forward Process"; reference code NVlabs/DiffusionNFT,
``scripts/train_nft_sd3.py``).

Each optimizer step k:

1. the sampling policy v_old draws G samples x0 for each of P prompts with any sampler (the chain's ODE
   by default, as the reference's deterministic solver; ``noise_level`` > 0 for the SDE; or a steering
   method by name, ``steer_method``, so FK's samples become NFT's data) and the reward scores them;
2. advantages A (``global_std``: (r − prompt mean) / (std of the batch + 1e-4), the reference's
   ``PerPromptStatTracker(global_std=True)`` cleared every epoch) become optimality probabilities
   r = clamp(clamp(A, ±A_max) / (2·A_max) + 1/2, 0, 1);
3. at int(``timestep_fraction``·S) of the chain's steps i, x_i = add_noise(x0, ε) (the forward process)
   and the implicit positive / negative policies are

       v⁺ = β·v_θ + (1 − β)·v_old,        v⁻ = (1 + β)·v_old − β·v_θ,

   with v_θ the trained LoRA and v_old the frozen sampling policy (no gradient); the loss is

       L = A_max / β · E[ r·ℓ(v⁺) + (1 − r)·ℓ(v⁻) ] + kl_beta · E‖v_θ − v_ref‖²

   (v_ref: the LoRA switched off). The paper writes ℓ(v) = ‖v − (ε − x0)‖², the flow-matching loss
   (``loss_weighting="model"``); the reference code, and the default, measures it on the implied clean
   sample with an adaptive weight: ℓ(v) = ‖x̂0(v) − x0‖² / sg(mean|x̂0(v) − x0|), x̂0(v) = x_i − σ_i·v;
4. after the optimizer step the sampling policy moves toward the trained one:
   v_old ← d·v_old + (1 − d)·v_θ with d = min((k − flat)·rate, max) (0 before ``flat``); the
   reference's ``decay_type`` 1 (flat 0, rate 0.001, max 0.5) is the default, its type 2 (75, 0.0075,
   0.999, the OCR run) is a setting.

Diffusion models (ε / v / x0 prediction). Derivation: at a fixed x_i every parameterization f is affine
in the model output, x̂0(f) = a_i·x_i + b_i·f (ε: a = 1/sqrt(ᾱ), b = −sqrt(1−ᾱ)/sqrt(ᾱ); v: a = sqrt(ᾱ),
b = −sqrt(1−ᾱ); flow: a = 1, b = −σ), so mixing outputs mixes clean predictions,
x̂0(β·f_θ + (1−β)·f_old) = β·x̂0(f_θ) + (1−β)·x̂0(f_old): the implicit policies are built on the model's
own output exactly as on the velocity, and ‖x̂0(f) − x0‖² = b_i²·‖f − f*‖² with f* the
``kernels.training_target`` (ε for ε-prediction: the x̂0 loss is the ε-loss weighted by 1/SNR_i, as
the flow case is the velocity loss weighted by σ_i²). Both weightings therefore apply unchanged; the
adaptive one divides the per-sample scale out, which is why the reference uses it.

Which weighting on diffusion: the adaptive loss's gradient with respect to the model output scales with
|b_i|, which is σ_i ≤ 1 for flow but sqrt((1−ᾱ_i)/ᾱ_i) for ε-prediction (≈ 15 at the first step of a
"trailing" DDIM chain), so on diffusion models the noisiest steps, where x̂0 says least, dominate. On the
grey world (``tests.fixtures.grey``, ε-prediction, 4 steps, 20 steps of G = 16 at lr 1e-2, η = 1 samples)
the adaptive loss moved fresh samples' brightness 0.484 → 0.523 with every gradient clipped (norms
15–20), the model-space loss 0.484 → 0.685. Hence the default (``loss_weighting=None``): adaptive on
flow models (the reference's, and its only family), model-space on diffusion models (a declared
deviation; ``loss_weighting="adaptive"`` restores the reference's rule).

Guidance. DiffusionNFT is CFG-free: it samples and trains at guidance 1 (the ``diffusion_nft``
preset sets ``--guidance 1``) and the conditional branch is what is trained. With a process guidance
> 1 the samples come from the guided policy; ``guided=True`` then trains the guided prediction (the
policy that drew them) instead of the conditional branch.

Defaults (reference ``config/nft.py`` ``sd3_*`` on ``config/base.py``): β = 1, A_max = 5, global-std
advantages, G = 24 in the reference (8 here, a CPU-sized default; the preset sets 24), kl_beta = 1e-4,
timestep_fraction = 0.99, adaptive weighting (flow; see above for diffusion), decay type 1, lr 3e-4, the ODE sampler. The
``diffusion_nft`` preset (``steer.finetune.presets``) sets every value with its origin.

Deviations: the trained steps are one random subset per micro-batch shared by its samples
(``Process.denoise`` takes one step index per call; the reference draws a permutation per sample); one
optimizer step per P·G samples (the reference's epoch is 48 groups of 24 with one or two optimizer
steps); the sampler is steer's ODE (DDIM η = 0 / Euler) rather than the reference's 2nd-order DPM
solver; the advantages' statistics are this process' (the reference gathers every GPU's rewards);
the reference keeps v_old as a second peft adapter, here it is a copy of the LoRA tensors swapped in
for sampling and its forward (the same function).

Code names: ``beta`` = β, ``adv_clip_max`` = A_max, ``kl_beta`` = the reference's ``train.beta``,
``old_decay_*`` = the reference's ``return_decay``.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from steer import chain, kernels
from steer.finetune import lora
from steer.finetune.advantages import advantages
from steer.finetune.config import NFTConfig
from steer.finetune.denoising import conditional
from steer.finetune.trainer import Trainer, TrainResult
from steer.scoring import decode_and_score
from steer.types import Schedule

METHOD = "nft"


def nft(process, reward, prompts: Sequence[str], config: Optional[NFTConfig] = None, *, out_dir,
        resume: bool = False, overwrite: bool = False, callback: Optional[Callable] = None,
        accelerator=None, eval_reward=None) -> TrainResult:
    """DiffusionNFT LoRA fine-tuning on any reward (no gradients or log-probs needed); returns the LoRA."""
    config = config or NFTConfig()
    trainer = Trainer(process, reward, prompts, config, out_dir, method=METHOD, resume=resume, overwrite=overwrite,
                      accelerator=accelerator, callback=callback, eval_reward=eval_reward)
    if config.steer_method is not None:
        from steer.catalog import check_options, resolve_method

        trainer.steer_fn = resolve_method(config.steer_method)
        check_options(trainer.steer_fn, dict(config.steer_options), config.steer_method)
    return trainer.run(nft_step)


# ---- the paper's quantities -------------------------------------------------------------------------------
def optimality(adv: Tensor, adv_clip_max: float) -> Tensor:
    """r = clamp(clamp(A, ±A_max) / (2·A_max) + 1/2, 0, 1): the reward as an optimality probability."""
    return (adv.clamp(-adv_clip_max, adv_clip_max) / adv_clip_max / 2 + 0.5).clamp(0, 1)


def old_decay(step: int, flat: int, rate: float, top: float) -> float:
    """d of v_old ← d·v_old + (1 − d)·v_θ after ``step`` optimizer steps (the reference's ``return_decay``)."""
    return 0.0 if step < flat else min((step - flat) * rate, top)


def implied_x0(schedule: Schedule, i: int, x: Tensor, output: Tensor) -> Tensor:
    """x̂0 of a model output at step ``i`` (unclipped: the loss must see what the output implies)."""
    return kernels.to_prediction(replace(schedule, clip_sample=None), i, x, output).x0


def nft_loss(schedule: Schedule, i: int, x_t: Tensor, x0: Tensor, noise: Tensor, out_theta: Tensor,
             out_old: Tensor, r: Tensor, *, beta: float, adv_clip_max: float, weighting: str) -> Tensor:
    """Per-sample DiffusionNFT policy loss (B,): A_max/β · (r·ℓ(v⁺) + (1 − r)·ℓ(v⁻)), ``out_old`` held fixed."""
    out_old = out_old.detach().float()
    positive = beta * out_theta.float() + (1 - beta) * out_old  # v⁺ (B, ...)
    negative = (1 + beta) * out_old - beta * out_theta.float()  # v⁻ (B, ...)
    if weighting == "adaptive":
        ell = lambda v: _adaptive(implied_x0(schedule, i, x_t, v), x0.float())  # noqa: E731
    else:
        target = kernels.training_target(schedule, i, x0, noise).float()
        ell = lambda v: ((v - target) ** 2).flatten(1).mean(dim=1)  # noqa: E731
    return (r * ell(positive) + (1 - r) * ell(negative)) / beta * adv_clip_max


def weighting(schedule: Schedule, config: NFTConfig) -> str:
    """``loss_weighting``, or by default the reference's ``adaptive`` for flow and ``model`` for diffusion."""
    if config.loss_weighting is not None:
        return config.loss_weighting
    return "adaptive" if schedule.kind == "flow" else "model"


def _adaptive(x0_hat: Tensor, x0: Tensor) -> Tensor:
    """‖x̂0 − x0‖² / sg(mean|x̂0 − x0|) per sample (the reference's adaptive weighting, floor 1e-5)."""
    err = (x0_hat - x0).flatten(1)  # (B, D)
    weight = err.detach().double().abs().mean(dim=1).clamp_min(1e-5)  # (B,)
    return (err**2).mean(dim=1) / weight.to(err.dtype)


# ---- the sampling policy --------------------------------------------------------------------------------
@contextlib.contextmanager
def old_policy(trainer: Trainer):
    """v_old inside the block: its LoRA tensors swapped into the trained parameters, restored after."""
    saved = [p.detach().clone() for p in trainer.params]
    with torch.no_grad():
        for p, v in zip(trainer.params, trainer.extra["nft_old"]):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(trainer.params, saved):
                p.copy_(v)


def sync_old(trainer: Trainer, step: int) -> None:
    """v_old at the start of ``step``: a copy of v_θ at first, then the reference's soft update (once per step)."""
    extra, config = trainer.extra, trainer.config
    if "nft_old" not in extra:
        extra["nft_old"], extra["nft_synced"] = [p.detach().clone() for p in trainer.params], step
    elif extra["nft_synced"] < step:
        d = old_decay(step, config.old_decay_flat, config.old_decay_rate, config.old_decay_max)
        with torch.no_grad():
            for o, p in zip(extra["nft_old"], trainer.params):
                o.mul_(d).add_(p.detach(), alpha=1 - d)
        extra["nft_synced"] = step


@torch.no_grad()
def sample_batch(trainer: Trainer, generator: torch.Generator) -> dict:
    """P prompts × G samples from v_old (the chain, or ``steer_method``), their rewards and optimality r."""
    process, config = trainer.process, trainer.config
    idx = [i for i in trainer.pick_prompts(generator) for _ in range(config.group_size)]  # prompt-major
    cond = trainer.cond(idx)
    with old_policy(trainer):
        if config.steer_method is None:
            x = chain.run(process, process.init_noise(len(idx), generator), cond, noise_level=config.noise_level,
                          generator=generator, trace=trainer.trace)
            images, rewards = decode_and_score(process, trainer.reward, x, cond.prompts, trace=trainer.trace,
                                               method=METHOD)
        else:
            x, images, rewards = _steered(trainer, list(cond.prompts), generator)
    adv = advantages(config, rewards.float().cpu(), list(cond.prompts), {})
    return {"idx": idx, "x0": x.detach().float(), "rewards": rewards.float().cpu(),
            "r": optimality(adv, config.adv_clip_max), "eval_rewards": trainer.eval_scores(images, cond.prompts)}


def _steered(trainer: Trainer, prompts: list[str], generator: torch.Generator):
    """One steered sample per row from ``steer_method`` (every row an independent problem)."""
    result = trainer.steer_fn(trainer.process, trainer.reward, prompts, generator=generator,
                              **dict(trainer.config.steer_options))
    if result.latents is None:
        raise ValueError(f"steering method {trainer.config.steer_method!r} returned no latents to train on; "
                         f"use fk, best_of_n, dts_star or reno")
    trainer.trace.add_nfe(result.trace.nfe)
    trainer.trace.add_reward_calls(result.trace.reward_calls)
    return result.latents.detach(), result.images, result.rewards


# ---- one optimizer step ---------------------------------------------------------------------------------
def train_steps(num_steps: int, fraction: float, generator: torch.Generator) -> list[int]:
    """int(fraction·S) (at least 1) distinct chain steps in random order."""
    T = max(1, int(fraction * num_steps))
    return torch.randperm(num_steps, generator=generator)[:T].tolist()


def chunk_loss(trainer: Trainer, batch: dict, rows: slice, i: int, generator: torch.Generator) -> tuple[Tensor, dict]:
    """The loss of ``rows`` of the batch at chain step ``i`` (mean over rows) and its diagnostics."""
    process, config = trainer.process, trainer.config
    x0 = batch["x0"][rows].to(process.device)  # (b, C, h, w)
    cond = trainer.cond(batch["idx"][rows])
    cond = cond if config.guided else conditional(cond)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = kernels.add_noise(process.schedule, i, x0, noise)
    with torch.no_grad(), old_policy(trainer):
        out_old = process.denoise(x_t, i, cond).float()
    out_theta = process.denoise(x_t, i, cond).float()
    r = batch["r"][rows].to(out_theta.device)
    loss = nft_loss(process.schedule, i, x_t, x0, noise, out_theta, out_old, r, beta=config.beta,
                    adv_clip_max=config.adv_clip_max, weighting=weighting(process.schedule, config)).mean()
    info = {"old_deviation": float(((out_theta.detach() - out_old) ** 2).mean())}
    calls = 2
    if config.kl_beta > 0:
        with torch.no_grad(), lora.lora_disabled(process):
            out_ref = process.denoise(x_t, i, cond).float()
        kl = ((out_theta - out_ref) ** 2).flatten(1).mean(dim=1).mean()
        loss = loss + config.kl_beta * kl
        info["kl"], calls = float(kl.detach()), 3
    trainer.trace.add_nfe(calls * x0.shape[0])
    return loss, info


def nft_step(trainer: Trainer, generator: torch.Generator, step: int) -> dict:
    """Refresh v_old, sample from it, then accumulate the loss over the trained steps and micro-chunks."""
    config = trainer.config
    sync_old(trainer, step)
    batch = sample_batch(trainer, generator)
    B, size = len(batch["idx"]), config.train_batch_size
    steps = train_steps(trainer.process.num_steps, config.timestep_fraction, generator)
    total, infos = 0.0, []
    for i in steps:
        for start in range(0, B, size):
            rows = slice(start, min(start + size, B))
            loss, info = chunk_loss(trainer, batch, rows, i, generator)
            weight = (rows.stop - rows.start) / B / len(steps)
            trainer.backward(loss * weight)
            total += float(loss.detach()) * weight
            infos.append(info)
    kls = [f["kl"] for f in infos if "kl" in f]
    return {"loss": total, "rewards": batch["rewards"], "eval_rewards": batch["eval_rewards"],
            "prompts": [trainer.prompts[j] for j in batch["idx"]], "kl": sum(kls) / len(kls) if kls else None,
            "old_deviation": sum(f["old_deviation"] for f in infos) / len(infos)}
