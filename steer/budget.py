"""Compute accounting: every method reports what it spent, and can be capped.

NFE convention: one denoiser evaluation of one latent counts 1; a classifier-free-guidance pair
(conditional + unconditional in one batched call) counts once; a batch of k latents counts k.
``nfe_per_prompt`` divides by the number of prompts, so methods are compared at equal budget.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional


class BudgetExceeded(RuntimeError):
    """Raised when a method would spend more than its ``Budget`` allows."""


@dataclass(frozen=True)
class Budget:
    """A cap on spending, per prompt. ``None`` means unlimited."""

    nfe: Optional[int] = None
    reward_calls: Optional[int] = None

    def __post_init__(self):
        for name in ("nfe", "reward_calls"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"Budget.{name} must be >= 1 or None, got {v}")


@dataclass
class Trace:
    """What a run spent. ``nfe``/``reward_calls`` are totals over all prompts (images scored count 1
    each); ``steps`` holds per-step records (ESS, resampling events, best reward, ...);
    ``timings`` holds wall-clock seconds by part (``denoise``, ``decode``, ``reward``), measured by
    ``timed`` around the forward calls (backward passes and bookkeeping are the rest of ``seconds``)."""

    num_prompts: int = 1
    budget: Optional[Budget] = None
    nfe: int = 0
    reward_calls: int = 0
    backward_calls: int = 0
    seconds: float = 0.0
    steps: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def nfe_per_prompt(self) -> float:
        return self.nfe / max(self.num_prompts, 1)

    @property
    def reward_calls_per_prompt(self) -> float:
        return self.reward_calls / max(self.num_prompts, 1)

    def add_nfe(self, n: int) -> None:
        self._check("nfe", self.nfe + n)
        self.nfe += n

    def add_reward_calls(self, n: int) -> None:
        self._check("reward_calls", self.reward_calls + n)
        self.reward_calls += n

    def add_backward(self, n: int = 1) -> None:
        self.backward_calls += n

    @contextmanager
    def timed(self, part: str):
        """Add the wall-clock time of the block to ``timings[part]`` (CUDA work is synchronised
        first when CUDA is in use, so queued kernels are charged to the part that launched them)."""
        _sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - t

    def record(self, **info: Any) -> None:
        self.steps.append(info)

    def stop_clock(self) -> "Trace":
        self.seconds = time.perf_counter() - self._t0
        return self

    def _check(self, name: str, total: int) -> None:
        cap = None if self.budget is None else getattr(self.budget, name)
        if cap is not None and total > cap * self.num_prompts:
            raise BudgetExceeded(
                f"{name} budget exceeded: {total / self.num_prompts:g} per prompt > {cap}; "
                f"raise the budget or lower the method's size options"
            )


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
