"""CARINOX: initial-noise optimization with exploration and a category-aware reward (Kasaei et al. 2025,
"CARINOX: Inference-time Scaling with Category-Aware Reward-based Initial Noise Optimization and
Exploration"; code amirkasaei/carinox, ``main.py`` and ``training/trainer.py``).

Exploration: ``seeds`` independent initial noises per prompt; optimization: each is optimized by ReNO
(``steer.samplers.reno``: SGD with Nesterov momentum on −reward + the chi-norm prior, per-prompt gradient
clipping) and the best image over every seed and iteration is returned. The reward may be chosen per
prompt category (``category_rewards`` with ``categorize``: ``steer.rewards.category.CategoryReward``),
off by default.

Defaults (the reference's ``arguments.py``): 50 iterations, lr 5, momentum 0.9 (Nesterov), grad clip 0.1,
reg_weight 0.01; ``seeds=3`` (its README's multi-seed run ``--k 3``; its seed list has 5).
Deviations: the seeds' optimizations run as one batch (same arithmetic, one denoiser call per
iteration for all); the best is chosen by the weighted reward being optimized (the reference compares
the unweighted sum of its reward losses); with several rewards the reference clips each reward's gradient
before summing and adds the prior once per reward, here the weighted sum's gradient is clipped once and
the prior added once (ReNO's rule); the category table and its probabilities are the user's (the
reference ships an LLM's guesses for its benchmarks' prompts and per-category reward weights).
Cost per prompt: seeds·iterations·S NFE, as many backward passes, seeds·iterations reward calls per term.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import torch

from steer import toolkit
from steer.budget import Budget, Trace
from steer.rewards.category import CategoryReward
from steer.samplers.reno import reno
from steer.types import Result, StepInfo

METHOD = "carinox"


def carinox(process, reward, prompts: Sequence[str] | str, *, generator: Optional[torch.Generator] = None,
            budget: Optional[Budget] = None, callback: Optional[Callable[[StepInfo], object]] = None,
            seeds: int = 3, iterations: int = 50, lr: float = 5.0, momentum: float = 0.9, grad_clip: float = 0.1,
            reg_weight: float = 0.01, checkpointing: bool = True,
            category_rewards: Optional[Mapping[str, object]] = None,
            categorize: Optional[Union[Callable[[str], object], Mapping[str, object]]] = None) -> Result:
    """CARINOX: ReNO from ``seeds`` initial noises per prompt, the best image over seeds and iterations;
    with ``category_rewards`` and ``categorize``, each prompt is scored by its category's reward (``reward``
    for prompts of no known category). Defaults: 3 seeds × 50 iterations, lr 5, clip 0.1, reg 0.01."""
    prompts = toolkit.prompt_list(METHOD, prompts)
    toolkit.check_reward(METHOD, reward, differentiable=True)
    k = toolkit.integer(METHOD, "seeds", seeds)
    iterations = toolkit.integer(METHOD, "iterations", iterations)
    reward = _category_reward(reward, category_rewards, categorize)
    P, S = len(prompts), process.num_steps
    trace = toolkit.plan(METHOD, P, budget, unit_nfe=iterations * S, unit="one ReNO run (iterations·steps)",
                         nfe=k * iterations * S, reward_calls=k * iterations * _terms(reward), hint="lower seeds")
    rows = [p for p in prompts for _ in range(k)]  # (P·k,) prompt-major: each seed an independent problem
    try:
        res = reno(process, reward, rows, generator=generator, callback=callback, iterations=iterations, lr=lr,
                   momentum=momentum, grad_clip=grad_clip, reg_weight=reg_weight, checkpointing=checkpointing)
    except (ValueError, TypeError, RuntimeError) as e:  # reno's errors (a reward's fault, NaN scores, a bad
        if not str(e).startswith(("reno:", "reno at ")):  # option) name this method, as every method's do
            raise
        raise type(e)(METHOD + str(e)[len("reno"):]) from e
    _absorb(trace, res.trace)
    best = toolkit.best_rows(res.rewards, P)  # (P,) the best seed of each prompt
    history = res.candidate_rewards.view(P, k * iterations)  # seed-major within a prompt
    return toolkit.result(process, prompts, trace, res.latents[best], res.rewards[best], images=res.images[best],
                          initial_noise=res.initial_noise[best], candidate_rewards=history)


def _category_reward(reward, category_rewards, categorize):
    if (category_rewards is None) != (categorize is None):
        raise ValueError(f"{METHOD}: category_rewards and categorize go together (a mapping category -> reward "
                         f"and a rule prompt -> category); pass both or neither")
    if category_rewards is None:
        return reward
    default = reward if callable(reward) else None
    return CategoryReward(category_rewards, categorize, default=default)


def _terms(reward) -> int:
    return len(reward) if isinstance(reward, (list, tuple)) else 1


def _absorb(trace: Trace, inner: Trace) -> None:
    """Book the inner ReNO run (over P·seeds rows) into this run's trace (over P prompts)."""
    trace.add_nfe(inner.nfe)
    trace.add_reward_calls(inner.reward_calls)
    trace.add_backward(inner.backward_calls)
    for part, sec in inner.timings.items():
        trace.timings[part] = trace.timings.get(part, 0.0) + sec
    trace.steps.extend(inner.steps)
