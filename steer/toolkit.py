"""The method toolkit: everything a steering method needs besides its algorithm.

A method is ``name(process, reward, prompts, *, generator=None, budget=None, callback=None,
**knobs) -> Result``. Its public function checks its knobs with the checks here, resolves its
kernel's stochasticity with ``noise_level``, plans its spending with ``plan`` (or an ``Allowance``
for anytime methods), writes its core as a generator of ``StepInfo`` drained by ``drain``, and
packages the outcome with ``result`` / ``from_candidates``. Denoising steps are taken by
``steer.chain``; scoring by ``steer.scoring``.

Layout: the particles of P prompts are flat and prompt-major, (P·K, ...); ``by_prompt`` views them
as (P, K, ...). Selection never mixes prompts.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Callable, Generator, Optional, Sequence

import torch
from torch import Tensor

from steer.budget import Budget, Trace
from steer.errors import SteerError
from steer.io import MAX_PROMPT_CHARS
from steer.scoring import decode
from steer.types import Result, StepInfo

# ---- the kernel's noise: one knob, one defaults table ------------------------------------------

# DDPM-like DDIM (η = 1) for diffusion; the Flow-GRPO SDE noise level a = 0.7 (Liu et al. 2025) for
# flow matching. "deterministic" is the process' ordinary sampler (DDIM η = 0 / the Euler ODE).
NOISE_DEFAULTS = {"stochastic": {"diffusion": 1.0, "flow": 0.7},
                  "deterministic": {"diffusion": 0.0, "flow": 0.0}}


@dataclass(frozen=True)
class NoiseDefault:
    """The default of a method's ``noise_level`` knob, resolved by the process' kind."""

    name: str  # a key of NOISE_DEFAULTS

    def level(self, kind: str) -> float:
        return NOISE_DEFAULTS[self.name][kind]

    def __repr__(self) -> str:
        d = NOISE_DEFAULTS[self.name]
        return f"{self.name} (diffusion eta={d['diffusion']:g} | flow a={d['flow']:g})"


STOCHASTIC, DETERMINISTIC = NoiseDefault("stochastic"), NoiseDefault("deterministic")


def noise_level(process, method: str, level, eta: Optional[float] = None) -> float:
    """The kernel's stochasticity: DDIM η for diffusion, the Flow-GRPO SDE level a for flow.
    ``process``: a ``Process`` or its chain kind (``"diffusion"`` / ``"flow"``); ``level`` is the method's
    ``noise_level`` (a ``NoiseDefault`` when not set); ``eta`` is its alias on diffusion processes."""
    kind = process if isinstance(process, str) else process.schedule.kind
    if eta is not None:
        if kind != "diffusion":
            raise ValueError(f"{method}: eta applies to diffusion processes; this process is flow matching, "
                             f"pass noise_level= (the Flow-GRPO SDE level a) instead")
        if not isinstance(level, NoiseDefault):
            raise ValueError(f"{method}: eta is an alias of noise_level; pass one of them, not both")
        level = eta
    if isinstance(level, NoiseDefault):
        return level.level(kind)
    return number(method, "noise_level" if eta is None else "eta", level, maximum=MAX_NOISE_LEVEL)


# ---- option checks -----------------------------------------------------------------------------

def prompt_list(method: str, prompts) -> list[str]:
    """A prompt or a list of prompts as a non-empty list of strings."""
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts) if isinstance(prompts, (list, tuple)) else prompts
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{method}: prompts must be a string or a non-empty list of strings, got {prompts!r}")
    for k, p in enumerate(prompts):  # a bounded cost per prompt: no multi-megabyte caption reaches a tokenizer
        if len(p) > MAX_PROMPT_CHARS:
            raise ValueError(f"{method}: prompt {k} is {len(p):,} characters long, over the limit of "
                             f"{MAX_PROMPT_CHARS:,}; shorten it")
    return prompts


# Limits on what a method takes: a number past them is a typo or a resource bomb, never a setting
# (see README "Limits"). Counts (particles, n, rollouts, iterations, ...) and step indices are capped at
# MAX_COUNT; the reward temperature λ at MAX_LAM (inf only where the method allows it: FK's
# ``potential="tempered"``, DTS*/UCT); the kernel noise (DDIM η, flow SDE a) at MAX_NOISE_LEVEL: η > 1
# is legal DDIM but its direction term turns imaginary, and a ≫ 1 makes the SDE's drift blow up.
MAX_COUNT = 100_000
MAX_NUMBER = 1e6  # any other number option (learning rates, weights, widening constants, ...)
MAX_LAM = MAX_NUMBER
MAX_NOISE_LEVEL = 10.0


def integer(method: str, name: str, value, minimum: int = 1, maximum: Optional[int] = MAX_COUNT) -> int:
    """``value`` as an int in [``minimum``, ``maximum``] (numpy integers accepted), or a SteerError
    naming the option and the limit."""
    try:
        v = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        v = None
    if v is None or v < minimum:
        raise SteerError(f"{method}: {name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and v > maximum:
        raise SteerError(f"{method}: {name}={v} is over the limit {maximum}; pass {name} <= {maximum}")
    return int(v)


def number(method: str, name: str, value, *, positive: bool = False, allow_inf: bool = False,
           maximum: Optional[float] = MAX_NUMBER) -> float:
    """``value`` as a float >= 0 (> 0 if ``positive``) and <= ``maximum`` (None: no cap), finite unless
    ``allow_inf`` (inf is then allowed past ``maximum``), or a SteerError naming the option and the limit.
    Strings are refused: the CLI types its values before they get here."""
    bound = "> 0" if positive else ">= 0"
    try:
        if isinstance(value, (str, bytes, bool)) or isinstance(value, complex):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise SteerError(f"{method}: {name} must be a number {bound}, got {value!r}") from None
    if math.isnan(v) or (math.isinf(v) and not allow_inf) or v < 0 or (positive and v == 0):
        raise SteerError(f"{method}: {name} must be a {'' if allow_inf else 'finite '}number {bound}, got {value!r}")
    if maximum is not None and math.isfinite(v) and v > maximum:
        raise SteerError(f"{method}: {name}={v:g} is over the limit {maximum:g}; pass {name} <= {maximum:g}"
                         + (" (or inf)" if allow_inf else ""))
    return v


def choice(method: str, name: str, value, choices) -> str:
    """``value`` as one of the strings ``choices``, or a SteerError listing them (``name`` says what it is)."""
    if not isinstance(value, str) or value not in choices:
        raise SteerError(f"{method}: unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def check_reward(method: str, reward, *, differentiable: bool = False) -> None:
    if not callable(reward):
        raise TypeError(f"{method}: reward must be a steer.rewards.Reward (or callable images, prompts -> scores), "
                        f"got {type(reward).__name__}")
    if differentiable and not getattr(reward, "differentiable", False):
        raise ValueError(f"{method}: reward {getattr(reward, 'name', reward)!r} is not differentiable; this option "
                         f"needs gradients of the reward (use a differentiable reward or turn the option off)")


# ---- budget planning ---------------------------------------------------------------------------

def plan(method: str, num_prompts: int, budget: Optional[Budget], *, unit_nfe: int, unit: str = "one chain",
         nfe: Optional[int] = None, reward_calls: Optional[int] = None, hint: str = "lower the method's size options"
         ) -> Trace:
    """The run's ``Trace``, after checking that ``budget`` pays for the smallest unit of work
    (``unit_nfe`` denoiser calls per prompt) and, for a method with a fixed plan, for its planned
    ``nfe`` and ``reward_calls`` per prompt (None: an anytime method, stopped by an ``Allowance``)."""
    if budget is not None and not isinstance(budget, Budget):
        raise TypeError(f"{method}: budget must be a steer.Budget, got {type(budget).__name__}")
    cap_nfe = None if budget is None else budget.nfe
    cap_r = None if budget is None else budget.reward_calls
    if cap_nfe is not None and cap_nfe < unit_nfe:
        raise ValueError(f"{method}: budget.nfe={cap_nfe} per prompt is too small for {unit} of {unit_nfe} "
                         f"denoiser calls; raise Budget(nfe=...) to at least {unit_nfe} or use fewer "
                         f"num_inference_steps")
    if cap_nfe is not None and nfe is not None and nfe > cap_nfe:
        raise ValueError(f"{method}: needs {nfe} denoiser calls per prompt but the budget allows {cap_nfe}; "
                         f"{hint} or raise the budget")
    if cap_r is not None and reward_calls is not None and reward_calls > cap_r:
        raise ValueError(f"{method}: needs {reward_calls} reward calls per prompt but the budget allows "
                         f"{cap_r}; {hint} or raise the budget")
    return Trace(num_prompts=num_prompts, budget=budget)


@dataclass
class Allowance:
    """Per-prompt spending of an anytime method against its budget: ``affords`` asks, ``spend``
    books (booking before the work lets a method plan a batch of it)."""

    num_prompts: int
    budget: Optional[Budget]
    nfe: list[int] = field(default_factory=list)
    reward_calls: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.nfe = self.nfe or [0] * self.num_prompts
        self.reward_calls = self.reward_calls or [0] * self.num_prompts

    def affords(self, k: int, nfe: int = 0, reward_calls: int = 0) -> bool:
        b = self.budget
        if b is None:
            return True
        return ((b.nfe is None or self.nfe[k] + nfe <= b.nfe)
                and (b.reward_calls is None or self.reward_calls[k] + reward_calls <= b.reward_calls))

    def spend(self, k: int, nfe: int = 0, reward_calls: int = 0) -> None:
        self.nfe[k] += nfe
        self.reward_calls[k] += reward_calls

    def affords_all(self, nfe: int = 0, reward_calls: int = 0) -> bool:
        return all(self.affords(k, nfe, reward_calls) for k in range(self.num_prompts))

    def spend_all(self, nfe: int = 0, reward_calls: int = 0) -> None:
        for k in range(self.num_prompts):
            self.spend(k, nfe, reward_calls)


# ---- running a core and packaging its outcome --------------------------------------------------

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


def by_prompt(t: Optional[Tensor], num_prompts: int) -> Optional[Tensor]:
    """Flat prompt-major (P·K, ...) -> (P, K, ...)."""
    return None if t is None else t.reshape(num_prompts, -1, *t.shape[1:])


def prompt_rows(num_prompts: int, k: int) -> Tensor:
    """Prompt index of each of ``k`` rows per prompt, prompt-major: [0]*k + [1]*k + ..."""
    return torch.arange(num_prompts).repeat_interleave(k)  # (P·k,)


def top_rows(r: Tensor, num_prompts: int, keep: int) -> Tensor:
    """Flat indices of the ``keep`` best rows of each prompt's group, best first: (P·keep,)."""
    per = r.numel() // num_prompts
    top = r.view(num_prompts, per).topk(keep, dim=1).indices  # (P, keep)
    return (top + per * torch.arange(num_prompts, device=top.device)[:, None]).flatten()


def best_rows(r: Tensor, num_prompts: int) -> Tensor:
    """Flat index of the best row of each prompt's group (the first on ties): (P,)."""
    per = r.numel() // num_prompts
    return r.view(num_prompts, per).argmax(dim=1) + per * torch.arange(num_prompts, device=r.device)


def result(process, prompts: Sequence[str], trace: Trace, latents: Tensor, rewards: Tensor, *,
           images: Optional[Tensor] = None, result_cls=Result, **fields) -> Result:
    """A ``Result`` for the selected final ``latents`` (P, ...) and their ``rewards`` (P,); the
    images are ``images`` when the caller already decoded them, else decoded here (no reward call)."""
    if images is None:
        with torch.no_grad():
            images = decode(process, latents, trace).float()  # (P, 3, H, W)
    return result_cls(images=images, rewards=rewards.float(), trace=trace.stop_clock(), latents=latents,
                      prompts=tuple(prompts), **fields)


def from_candidates(process, prompts: Sequence[str], trace: Trace, images: Tensor, rewards: Tensor,
                    latents: Tensor, **fields) -> Result:
    """A ``Result`` from flat decoded candidates (P·K, ...): the best of each prompt selected, all
    kept as ``candidates`` (P, K, ...)."""
    P = len(prompts)
    best = best_rows(rewards, P)  # (P,)
    return result(process, prompts, trace, latents[best.to(latents.device)], rewards[best],
                  images=images[best.to(images.device)], candidates=by_prompt(images, P),
                  candidate_rewards=by_prompt(rewards, P), **fields)


def from_ranked(process, prompts: Sequence[str], trace: Trace, latents: Tensor, rewards: Tensor, **fields) -> Result:
    """A ``Result`` from final latents (P·K, ...) in the order to report within each prompt (best-first, or
    as drawn for a sampler), with their rewards (P, K): the first of each prompt selected, all decoded into
    ``candidates``."""
    P = len(prompts)
    with torch.no_grad():
        images = by_prompt(decode(process, latents, trace).float(), P)  # (P, K, 3, H, W)
    return result(process, prompts, trace, by_prompt(latents, P)[:, 0], rewards[:, 0], images=images[:, 0],
                  candidates=images, candidate_rewards=rewards, **fields)
