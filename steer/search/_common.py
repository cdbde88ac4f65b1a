"""Small helpers shared by the search methods: option checks, kernel noise defaults, results."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from steer.scoring import decode
from steer.budget import Budget, Trace
from steer.types import Result

# Stochastic-kernel defaults: DDPM-like DDIM (η = 1) for diffusion, the Flow-GRPO SDE noise level
# a = 0.7 (Liu et al. 2025) for flow matching.
DEFAULT_NOISE = {"diffusion": 1.0, "flow": 0.7}


def as_prompts(prompts) -> tuple[str, ...]:
    """A prompt or a list of prompts -> a non-empty tuple of strings."""
    out = (prompts,) if isinstance(prompts, str) else tuple(prompts)
    if not out:
        raise ValueError("prompts is empty: pass a prompt or a list of prompts")
    return out


def noise_level_for(process, noise_level: Optional[float], method: str) -> float:
    """The kernel's stochasticity: ``noise_level`` if given, else the family default."""
    if noise_level is None:
        return DEFAULT_NOISE[process.schedule.kind]
    if not math.isfinite(noise_level) or noise_level < 0:
        raise ValueError(f"{method}: noise_level must be a finite number >= 0 (DDIM η or flow SDE a), got {noise_level}")
    return float(noise_level)


def check_int(method: str, name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{method}: option {name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive(method: str, name: str, value, allow_inf: bool = False) -> float:
    """``value`` as a float > 0 (finite unless ``allow_inf``), or a ValueError naming the option."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{method}: option {name} must be a number > 0, got {value!r}") from None
    if not v > 0 or (math.isinf(v) and not allow_inf) or math.isnan(v):
        raise ValueError(f"{method}: option {name} must be > 0{'' if allow_inf else ' and finite'}, got {value!r}")
    return v


def check_budget(method: str, budget: Optional[Budget], nfe_needed: int, what: str) -> None:
    """Refuse a budget that cannot pay for the smallest unit of work (``nfe_needed`` NFE per prompt)."""
    if budget is None:
        return
    if not isinstance(budget, Budget):
        raise TypeError(f"{method}: budget must be a steer.Budget, got {type(budget).__name__}")
    if budget.nfe is not None and budget.nfe < nfe_needed:
        raise ValueError(f"{method}: budget.nfe={budget.nfe} is smaller than {what} ({nfe_needed} NFE per prompt); "
                         f"raise Budget(nfe=...) to at least {nfe_needed} or use fewer num_inference_steps")
    if budget.reward_calls is not None and budget.reward_calls < 1:
        raise ValueError(f"{method}: budget.reward_calls must allow at least one scored sample")


def prompt_rows(num_prompts: int, k: int) -> Tensor:
    """Prompt index of each of ``k`` rows per prompt, prompt-major: [0]*k + [1]*k + ..."""
    return torch.arange(num_prompts).repeat_interleave(k)  # (P*k,)


def make_result(process, prompts: Sequence[str], latents: Tensor, rewards: Tensor, trace: Trace,
                candidates: Optional[Tensor] = None, candidate_rewards: Optional[Tensor] = None,
                result_cls=Result, **extra) -> Result:
    """Decode the selected latents (P, ...) and package a ``Result`` (no denoiser call, no reward call)."""
    with torch.no_grad():
        images = decode(process, latents, trace).float()  # (P, 3, H, W)
    trace.stop_clock()
    return result_cls(images=images, rewards=rewards.float(), trace=trace, latents=latents,
                      candidates=candidates, candidate_rewards=candidate_rewards, prompts=tuple(prompts), **extra)
