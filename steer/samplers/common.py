"""Pieces every sampler (and the search methods) share: option checks, the kernel's noise level,
chunked prediction and scoring, budget checks, per-prompt selection, and draining a core generator.

Layout: particles of P prompts are flat and prompt-major, (P·K, ...); ``by_prompt`` views them as
(P, K, ...). Selection never mixes prompts.
"""
from __future__ import annotations

import math
from typing import Callable, Generator, Optional, Sequence

import torch
from torch import Tensor

from steer.budget import Budget, Trace
from steer.scoring import decode, score_images
from steer.types import Cond, Prediction, Result, StepInfo


# ---- options -----------------------------------------------------------------------------

def positive_int(method: str, name: str, value) -> int:
    """``value`` as an int >= 1, or a ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{method}: {name} must be an integer >= 1, got {value!r}")
    return value


def non_negative(method: str, name: str, value) -> float:
    """``value`` as a finite float >= 0, or a ValueError naming the option."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{method}: {name} must be a number >= 0, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{method}: {name} must be a finite number >= 0, got {value!r}")
    return v


def prompt_list(method: str, prompts) -> list[str]:
    """A prompt or a list of prompts as a non-empty list of strings."""
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts) if isinstance(prompts, (list, tuple)) else prompts
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{method}: prompts must be a string or a non-empty list of strings, got {prompts!r}")
    return prompts


def noise_level(process, method: str, eta: Optional[float], level: Optional[float], *,
                default_eta: float, default_level: float) -> float:
    """The kernel's stochasticity: DDIM η for diffusion processes, the Flow-GRPO SDE level a for
    flow processes. Passing the other family's knob is an error that names the right one."""
    kind = process.schedule.kind
    if kind == "diffusion":
        if level is not None:
            raise ValueError(f"{method}: noise_level applies to flow-matching processes; this process is a "
                             f"diffusion process, pass eta= (DDIM stochasticity) instead")
        return non_negative(method, "eta", default_eta if eta is None else eta)
    if eta is not None:
        raise ValueError(f"{method}: eta applies to diffusion processes; this process is flow matching, "
                         f"pass noise_level= (the Flow-GRPO SDE level a) instead")
    return non_negative(method, "noise_level", default_level if level is None else level)


def check_reward(method: str, reward, *, differentiable: bool = False) -> None:
    if not callable(reward):
        raise TypeError(f"{method}: reward must be a steer.rewards.Reward (or callable images, prompts -> scores), "
                        f"got {type(reward).__name__}")
    if differentiable and not getattr(reward, "differentiable", False):
        raise ValueError(f"{method}: reward {getattr(reward, 'name', reward)!r} is not differentiable; this option "
                         f"needs gradients of the reward (use a differentiable reward or turn the option off)")


# ---- budget ------------------------------------------------------------------------------

def new_trace(method: str, num_prompts: int, budget: Optional[Budget], *, nfe: int, reward_calls: int,
              chain_nfe: int, size_hint: str) -> Trace:
    """A ``Trace`` for the run, after checking that its planned spending per prompt fits ``budget``:
    ``nfe`` and ``reward_calls`` per prompt planned, ``chain_nfe`` the cost of a single chain."""
    if budget is not None and not isinstance(budget, Budget):
        raise TypeError(f"{method}: budget must be a steer.Budget, got {type(budget).__name__}")
    if budget is not None and budget.nfe is not None and budget.nfe < chain_nfe:
        raise ValueError(f"{method}: an NFE budget of {budget.nfe} per prompt is too small for one chain of "
                         f"{chain_nfe} denoiser calls; raise the budget or use fewer num_inference_steps")
    if budget is not None and budget.nfe is not None and nfe > budget.nfe:
        raise ValueError(f"{method}: needs {nfe} denoiser calls per prompt but the budget allows {budget.nfe}; "
                         f"{size_hint} or raise the budget")
    if budget is not None and budget.reward_calls is not None and reward_calls > budget.reward_calls:
        raise ValueError(f"{method}: needs {reward_calls} reward calls per prompt but the budget allows "
                         f"{budget.reward_calls}; {size_hint} or raise the budget")
    return Trace(num_prompts=num_prompts, budget=budget)


# ---- running the model -------------------------------------------------------------------

def predict(process, x: Tensor, i: int, cond: Cond, trace: Optional[Trace], batch_size: Optional[int]) -> Prediction:
    """``process.predict`` over chunks of ``batch_size`` rows (None: the process' own chunking)."""
    if batch_size is None or batch_size >= x.shape[0]:
        return process.predict(x, i, cond, trace=trace)
    parts = [process.predict(x[s:s + batch_size], i, cond.index(list(range(s, min(s + batch_size, len(x))))),
                             trace=trace) for s in range(0, x.shape[0], batch_size)]
    return Prediction(*(torch.cat([getattr(p, f) for p in parts]) for f in ("output", "x0", "eps")))


def decode_and_score(process, reward, x0: Tensor, prompts: Sequence[str], *, trace: Optional[Trace], method: str,
                     step: Optional[int], batch_size: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Decode latents (B, ...) to images (B, 3, H, W) and score them (B,), chunked, without gradients."""
    chunk = batch_size or getattr(process, "batch_size", None) or x0.shape[0]
    images, rewards = [], []
    with torch.no_grad():
        for s in range(0, x0.shape[0], chunk):
            img = decode(process, x0[s:s + chunk], trace)  # (b, 3, H, W)
            rewards.append(score_images(reward, img, prompts[s:s + chunk], trace=trace, method=method, step=step))
            images.append(img.float())
    return torch.cat(images), torch.cat(rewards)


# ---- results -----------------------------------------------------------------------------

def by_prompt(t: Optional[Tensor], P: int) -> Optional[Tensor]:
    """Flat prompt-major (P·K, ...) -> (P, K, ...)."""
    return None if t is None else t.reshape(P, -1, *t.shape[1:])


def best_per_prompt(images: Tensor, rewards: Tensor, latents: Tensor, P: int) -> tuple[Tensor, Tensor, Tensor]:
    """The highest-reward candidate of each prompt: (images (P,3,H,W), rewards (P,), latents (P, ...))."""
    r = by_prompt(rewards, P)  # (P, K)
    best = r.argmax(dim=1)  # (P,)
    rows = torch.arange(P, device=best.device)
    return by_prompt(images, P)[rows, best.to(images.device)], r[rows, best], \
        by_prompt(latents, P)[rows, best.to(latents.device)]


def make_result(prompts: Sequence[str], images: Tensor, rewards: Tensor, latents: Tensor, trace: Trace, *,
                log_weights: Optional[Tensor] = None, select: str = "best") -> Result:
    """A ``Result`` from flat candidates (P·K, ...): the best per prompt selected, all kept as (P, K, ...)."""
    P = len(prompts)
    sel_images, sel_rewards, sel_latents = best_per_prompt(images, rewards, latents, P)
    return Result(images=sel_images, rewards=sel_rewards, trace=trace.stop_clock(), latents=sel_latents,
                  candidates=by_prompt(images, P), candidate_rewards=by_prompt(rewards, P),
                  log_weights=log_weights, prompts=tuple(prompts))


def drain(core: Generator[StepInfo, None, object], callback: Optional[Callable[[StepInfo], object]]):
    """Run a method's core generator to the end, calling ``callback`` on every ``StepInfo``;
    returns the generator's return value."""
    while True:
        try:
            info = next(core)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(info)
