"""ReNO: reward-based noise optimization (Eyring et al. 2024, "ReNO: Enhancing One-step Text-to-Image
Models through Reward-based Noise Optimization").

The initial noise z of a one-step or few-step deterministic sampler is optimized by gradient ascent
on the reward of the generated image, with a prior term that keeps ‖z‖ where N(0, I) puts it:

    L(z) = −Σ_k w_k·r_k(decode(chain(z))) + reg_weight·(½‖z‖² − (d−1)·log‖z‖)     (float32)

(the second term is the negative log-density of ‖z‖ under the chi distribution with d degrees of
freedom, up to a constant). Defaults from the paper: 50 iterations, SGD with Nesterov momentum
0.9, lr 5, gradient-norm clipping 0.1, reg_weight 0.01; the best image seen is returned.

Notation: ``z`` the initial noise x_T (P, *latent), one per prompt; ``d`` its dimension.
The chain is the process' deterministic sampler (DDIM η = 0 / Euler), differentiated end to end;
with ``checkpointing`` each denoiser step and the decode+reward are recomputed in the backward pass
(``torch.utils.checkpoint``) so memory does not grow with the number of steps.
Deviations: gradient clipping is per prompt (each prompt is an independent problem); ``reward``
may be a sequence of (Reward, weight) pairs for the paper's weighted multi-reward loss. NFE counts
forward denoiser calls (iterations·S per prompt); backward passes are counted in
``trace.backward_calls``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from steer import chain, toolkit
from steer.budget import Budget
from steer.scoring import reward_input, score_images
from steer.types import Result, StepInfo

METHOD = "reno"


def reno(process, reward, prompts: Sequence[str] | str, *, generator: Optional[torch.Generator] = None,
         budget: Optional[Budget] = None, callback: Optional[Callable[[StepInfo], object]] = None,
         iterations: int = 50, lr: float = 5.0, momentum: float = 0.9, grad_clip: float = 0.1,
         reg_weight: float = 0.01, checkpointing: bool = True) -> Result:
    """Optimize the initial noise of each prompt by reward gradient ascent; return the best image seen.

    ``reward``: a differentiable ``Reward`` or a sequence of ``(Reward, weight)`` pairs. Meant for
    one-step / few-step processes (``num_inference_steps`` 1–4): every iteration runs and
    differentiates the whole chain. ``Result.latents`` are the final latents of each prompt's best
    iteration, ``Result.initial_noise`` its optimized z, and ``Result.candidate_rewards``
    (P, iterations) the reward of every iteration.
    """
    prompts = toolkit.prompt_list(METHOD, prompts)
    terms = _reward_terms(reward)
    iterations = toolkit.integer(METHOD, "iterations", iterations)
    for name, v in (("lr", lr), ("momentum", momentum), ("grad_clip", grad_clip), ("reg_weight", reg_weight)):
        toolkit.number(METHOD, name, v)
    S, P = process.num_steps, len(prompts)
    trace = toolkit.plan(METHOD, P, budget, unit_nfe=S, nfe=iterations * S, reward_calls=iterations * len(terms),
                         hint="use fewer iterations")
    opt = dict(lr=float(lr), momentum=float(momentum), grad_clip=float(grad_clip), reg_weight=float(reg_weight))
    core = _reno_steps(process, terms, prompts, iterations, opt, bool(checkpointing), generator, trace)
    best = toolkit.drain(core, callback)
    return toolkit.result(process, prompts, trace, best.latents, best.rewards, images=best.images,
                          initial_noise=best.z, candidate_rewards=best.history)


@dataclass(frozen=True)
class Best:
    """Per prompt, the best iteration so far: its reward (P,), image, final latents and initial noise z."""

    rewards: Tensor
    z: Tensor
    images: Optional[Tensor] = None
    latents: Optional[Tensor] = None
    history: Optional[Tensor] = None  # (P, iterations) the reward of every iteration

    def update(self, better: Tensor, r: Tensor, images: Tensor, latents: Tensor, z: Tensor) -> "Best":
        def pick(new, old):
            return new.clone() if old is None else torch.where(better.to(new.device).view(-1, *[1] * (new.dim() - 1)),
                                                               new, old)
        return Best(rewards=torch.where(better, r, self.rewards), z=pick(z, self.z), images=pick(images, self.images),
                    latents=pick(latents, self.latents))


def norm_regularizer(z: Tensor) -> Tensor:
    """½‖z‖² − (d−1)·log‖z‖ per row (P,), in float32: −log chi_d(‖z‖) up to a constant."""
    z = z.float().flatten(1)
    d = z.shape[1]
    norm = z.norm(dim=1)
    return 0.5 * norm**2 - (d - 1) * torch.log(norm)


def _reward_terms(reward) -> list[tuple[object, float]]:
    pairs = list(reward) if isinstance(reward, (list, tuple)) else [(reward, 1.0)]
    if not pairs:
        raise ValueError(f"{METHOD}: no rewards given; pass a Reward or a list of (Reward, weight) pairs")
    out = []
    for item in pairs:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ValueError(f"{METHOD}: a reward list holds (Reward, weight) pairs, got {item!r}")
        r, w = item
        toolkit.check_reward(METHOD, r, differentiable=True)
        out.append((r, toolkit.number(METHOD, "reward weight", w)))
    return out


def _reno_steps(process, terms, prompts, iterations, opt, use_ckpt, generator, trace) -> Iterator[StepInfo]:
    """Core generator: one ``StepInfo`` per iteration; returns (best images, best rewards, best z, history)."""
    cond = process.prepare(prompts)
    z = process.init_noise(len(prompts), generator).requires_grad_(True)  # (P, *latent)
    sgd = torch.optim.SGD([z], lr=opt["lr"], momentum=opt["momentum"], nesterov=opt["momentum"] > 0)
    best = Best(rewards=torch.full((len(prompts),), -math.inf), z=z.detach().clone())
    history = []
    for it in range(iterations):
        images, x0, total = _forward(process, terms, z, cond, trace, use_ckpt, it)  # (P,3,H,W), (P,...), (P,)
        r = total.detach().cpu()
        best = best.update(r > best.rewards, r, images.detach().float(), x0.detach().float(), z.detach())
        best_r = best.rewards
        history.append(r)
        if it < iterations - 1:  # the last update would never be evaluated
            _update(sgd, z, total, opt, trace)
        trace.record(step=it, reward=r.tolist(), best_reward=best_r.tolist(),
                     z_norm=z.detach().flatten(1).norm(dim=1).tolist())
        yield StepInfo(step=it, x=z.detach(), nfe=trace.nfe, extra={"reward": r, "best_reward": best_r.clone()})
    return replace(best, history=torch.stack(history, dim=1))


def _forward(process, terms, z, cond, trace, use_ckpt, it):
    """images = decode(chain(z)) (P, 3, H, W), the final latents chain(z) and the weighted reward
    Σ w_k r_k (P,), differentiable."""
    x = z
    for i in range(process.num_steps):
        trace.add_nfe(x.shape[0])  # counted here: a checkpointed step re-runs in the backward pass
        x = checkpoint(_step, process, x, i, cond, use_reentrant=False) if use_ckpt else _step(process, x, i, cond)
    images = process.decode(x) if not use_ckpt else checkpoint(process.decode, x, use_reentrant=False)
    total = torch.zeros(z.shape[0], device=images.device)
    for reward, w in terms:
        trace.add_reward_calls(images.shape[0])
        score = (lambda im, rw=reward: score_images(rw, im, cond.prompts, method=METHOD, step=it))
        scored = reward_input(process, reward, x, images)  # a latent reward reads x_0, a video reward frames
        total = total + w * (checkpoint(score, scored, use_reentrant=False) if use_ckpt else score(scored))
    if not total.requires_grad:
        raise RuntimeError(f"{METHOD}: no gradient reaches the initial noise through "
                           f"{getattr(process, 'name', 'the process')}'s denoiser, decode and reward; ReNO needs "
                           f"all three differentiable (no torch.no_grad inside them)")
    return images, x, total


def _step(process, x: Tensor, i: int, cond) -> Tensor:
    """The deterministic transition x_i -> x_{i+1} (DDIM η = 0 / Euler), differentiable in x."""
    return chain.propose(process, x, i, cond).kernel.mean


def _update(sgd, z: Tensor, total: Tensor, opt, trace) -> None:
    """One SGD step on L = −reward + reg_weight·regularizer, gradient clipped per prompt."""
    loss = (-total.float() + opt["reg_weight"] * norm_regularizer(z)).sum()
    sgd.zero_grad(set_to_none=True)
    loss.backward()
    trace.add_backward(1)
    g = z.grad.flatten(1)  # (P, d)
    scale = (opt["grad_clip"] / (g.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)
    z.grad.copy_((g * scale).view_as(z))
    sgd.step()
