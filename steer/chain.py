"""Running the chain: one step, or a stretch of steps, of a ``Process`` with its kernel.

Everything stochastic takes an explicit ``torch.Generator``; every denoiser call is counted in the
``trace``. ``denoise`` is a generator of ``StepInfo`` so callers can observe, stop or test
intermediate states; ``run`` drains it.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import Tensor

from steer import kernels
from steer.types import Cond, StepInfo


def step(process, x: Tensor, i: int, cond: Cond, *, noise_level: float = 0.0,
         generator: Optional[torch.Generator] = None, trace=None):
    """One transition x_i -> x_{i+1}. Returns (x_next, prediction at x_i, the Gaussian kernel)."""
    pred = process.predict(x, i, cond, trace=trace)
    g = kernels.transition(process.schedule, i, x.float(), pred, noise_level)
    return kernels.sample(g, generator), pred, g


def denoise(process, x: Tensor, cond: Cond, *, start: int = 0, end: Optional[int] = None,
            noise_level: float = 0.0, generator: Optional[torch.Generator] = None,
            trace=None) -> Iterator[StepInfo]:
    """Steps ``start .. end-1`` (default: to the end of the schedule), yielding after each.
    ``StepInfo.extra["x0"]`` holds x̂0 predicted at the step's input."""
    end = process.num_steps if end is None else end
    for i in range(start, end):
        x, pred, _ = step(process, x, i, cond, noise_level=noise_level, generator=generator, trace=trace)
        yield StepInfo(step=i, x=x, nfe=0 if trace is None else trace.nfe, extra={"x0": pred.x0})


def run(process, x: Tensor, cond: Cond, **kw) -> Tensor:
    """Drain ``denoise`` and return the final state."""
    for info in denoise(process, x, cond, **kw):
        x = info.x
    return x
