"""The one place a denoising step is taken: prediction, kernel, sample.

``propose`` evaluates the denoiser at x_i and returns the step's ``Proposal`` — the prediction and
the Gaussian kernel p(x_{i+1} | x_i) — for methods that work with the kernel itself (reweighting,
guided proposals, branching, log-probs); ``step`` also draws x_{i+1}. ``denoise`` is a generator
of ``StepInfo`` over a stretch of steps so callers can observe, stop or test intermediate states;
``run`` drains it. Everything stochastic takes an explicit ``torch.Generator``; every denoiser call
is counted in the ``trace``; chunking of large batches is the ``Process``' own (``batch_size``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional

import torch
from torch import Tensor

from steer import kernels
from steer.kernels import Gaussian
from steer.types import Cond, Prediction, StepInfo


@dataclass(frozen=True)
class Proposal:
    """Step i at x_i: the denoiser's prediction and the kernel N(mean, std²) over x_{i+1}."""

    pred: Prediction
    kernel: Gaussian

    def take(self, idx: Tensor) -> "Proposal":
        """Rows ``idx`` (resampling, selection); a scalar std is shared by every row."""
        p, g = self.pred, self.kernel
        idx = idx.to(g.mean.device)
        std = g.std if g.std.ndim == 0 else g.std[idx]
        return Proposal(Prediction(output=p.output[idx], x0=p.x0[idx], eps=p.eps[idx]),
                        Gaussian(mean=g.mean[idx], std=std))

    def detach(self) -> "Proposal":
        p, g = self.pred, self.kernel
        return Proposal(Prediction(output=p.output.detach(), x0=p.x0.detach(), eps=p.eps.detach()),
                        Gaussian(mean=g.mean.detach(), std=g.std.detach()))

    def repeat(self, k: int) -> "Proposal":
        """Each row's proposal ``k`` times, row-major (k draws from every kernel)."""
        return self.take(torch.arange(self.kernel.mean.shape[0], device=self.kernel.mean.device).repeat_interleave(k))


class Step(NamedTuple):
    """One transition: x_{i+1}, the prediction at x_i and the kernel x_{i+1} was drawn from."""

    x: Tensor
    pred: Prediction
    kernel: Gaussian


def transition(process, i: int, x: Tensor, pred: Prediction, noise_level: float = 0.0) -> Gaussian:
    """The kernel of step ``i`` given the prediction at x_i (float32)."""
    return kernels.transition(process.schedule, i, x.float(), pred, noise_level)


def propose(process, x: Tensor, i: int, cond: Cond, *, noise_level: float = 0.0, trace=None) -> Proposal:
    """One batched denoiser call at x_i (counted in ``trace``) and the kernel it defines."""
    pred = process.predict(x, i, cond, trace=trace)
    return Proposal(pred, transition(process, i, x, pred, noise_level))


def sample(kernel: Gaussian, generator: Optional[torch.Generator] = None) -> Tensor:
    """x_{i+1} ~ kernel (its mean when the kernel is deterministic)."""
    return kernels.sample(kernel, generator)


def step(process, x: Tensor, i: int, cond: Cond, *, noise_level: float = 0.0,
         generator: Optional[torch.Generator] = None, trace=None) -> Step:
    """One transition x_i -> x_{i+1}."""
    prop = propose(process, x, i, cond, noise_level=noise_level, trace=trace)
    return Step(sample(prop.kernel, generator), prop.pred, prop.kernel)


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
