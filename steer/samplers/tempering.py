"""Adaptive tempering of FK's tilt: λ raised step by step as far as the particles can follow.

In SMC samplers with adaptive tempering (Jasra et al. 2011; Del Moral, Doucet & Jasra 2012) and in
DAS (Kim et al. 2025, "Test-time Alignment of Diffusion Models without Reward Over-optimization")
the next inverse temperature is the one that brings the effective sample size of the reweighted
particles down to a target. Here, at a scoring step s with rewards r_s (P, K), the log-weights as
a function of λ are log w + λ·r_s − λ_{s−1}·r_{s−1} (the difference potential with a moving λ),
and λ_s is the largest λ in [λ_{s−1}, λ_max] whose ESS is at least ``target``·K, found per prompt by
doubling then bisection. The choice is invariant to an affine change of the reward: r -> a·r + b
(a > 0) gives λ_s / a and the same weights, so FK no longer depends on the reward's scale; the
weighted final particles target p(x0)·exp(λ_final·r(x0)), λ_final reported in the trace.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from steer.samplers import resampling as rs

_DOUBLINGS, _BISECTIONS = 64, 40


def next_lambda(log_w: Tensor, r: Tensor, base: Tensor, lam_prev: Tensor, lam_max: float, target: float) -> Tensor:
    """λ_s per prompt (P,): the largest λ in [lam_prev, lam_max] with ESS(log_w + λ·r − base) >= target·K
    (lam_prev itself when even it misses the target, or when the rewards are all equal and λ_max is ∞).

    ``log_w``, ``r``, ``base`` (P, K): current log-weights, the step's rewards and the lineage's
    accumulated tilt λ_{s−1}·r_{s−1} (zeros at the first step); ``lam_prev`` (P,). Float64 inside."""
    log_w, r, base = log_w.double(), r.double(), base.double()
    need = target * r.shape[1] * (1 - 1e-9)

    def ok(lam: Tensor) -> Tensor:  # (P,) the ESS at λ meets the target
        return rs.ess(log_w + lam[:, None] * r - base) >= need

    start = lam_prev.double()
    spread = r.max(1).values - r.min(1).values  # (P,)
    flat = spread <= 0
    lo = start.clone()
    if math.isinf(lam_max):  # bracket by doubling from a scale-free first guess 1 / spread
        hi = lo + 1 / torch.where(flat, torch.ones_like(spread), spread)
        for _ in range(_DOUBLINGS):
            grow = ok(hi) & ~flat
            if not bool(grow.any()):
                break
            hi = torch.where(grow, lo + 2 * (hi - lo), hi)
    else:
        hi = torch.full_like(lo, float(lam_max))
    for _ in range(_BISECTIONS):  # invariant: lo meets the target (unless start does not), hi may not
        mid = (lo + hi) / 2
        good = ok(mid)
        lo, hi = torch.where(good, mid, lo), torch.where(good, hi, mid)
    out = torch.where(ok(hi), hi, lo)
    if math.isinf(lam_max):
        out = torch.where(flat, start, out)
    return torch.where(ok(start), out, start).float()
