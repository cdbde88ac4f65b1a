"""Feynman-Kac potentials of FK steering (Singhal et al. 2025, "A General Framework for
Inference-time Scaling and Steering of Diffusion Models", §3 and Table 1).

At each step s where rewards are evaluated, particle k gets the intermediate reward r_s = r(x̂0(x_s))
and the log-potential log G_s:

=============  ===================================================  ===========================
``max``        λ·max(r_s, r_{s'} for every earlier evaluated s')    running max along the lineage
``difference`` λ·(r_s − r_{s_prev})  (λ·r_s at the first evaluation) telescopes to λ·r_last
``sum``        λ·Σ_{s' ≤ s} r_{s'}                                  running sum along the lineage
``immediate``  λ·r_s
``tempered``   λ_s·r_s − λ_{s_prev}·r_{s_prev}, λ_s chosen per       the difference potential with
               prompt by ``tempering.next_lambda`` (λ a (P, 1)       an adaptive λ; telescopes to
               tensor here)                                         λ_last·r_last
=============  ===================================================  ===========================

The final potential is λ·r(x0) − Σ_s log G_s (the sum along the particle's lineage), so the
product of all potentials is exp(λ·r(x0)) and the weighted particles target
p(x0)·exp(λ·r(x0)) whichever intermediate potential is chosen.

Two defects of the reference implementation are avoided: its running max starts at 0, which
clips negative rewards (here the first evaluation starts the max), and its adaptive schedule drops
the potentials of steps where it does not resample (here they stay in the log-weights, see fk.py).

The state is (P, K) tensors, one row per prompt, reindexed with the particles at resampling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

POTENTIALS = ("max", "difference", "sum", "immediate", "tempered")


@dataclass(frozen=True)
class PotentialState:
    """Per-particle history of one lineage: last reward, running max and sum of rewards, and the
    accumulated log-potential Σ log G (divided out at the end). ``None`` before the first evaluation."""

    last: Optional[Tensor] = None  # (P, K)
    running_max: Optional[Tensor] = None  # (P, K)
    running_sum: Optional[Tensor] = None  # (P, K)
    log_prod: Optional[Tensor] = None  # (P, K)

    def take(self, ancestors: Tensor) -> "PotentialState":
        """The state of the particles chosen by group-local ``ancestors`` (P, K)."""
        def g(t):
            return None if t is None else torch.gather(t, 1, ancestors)
        return PotentialState(g(self.last), g(self.running_max), g(self.running_sum), g(self.log_prod))


def check_potential(name: str) -> str:
    if name not in POTENTIALS:
        raise ValueError(f"unknown potential {name!r}; choose one of {', '.join(POTENTIALS)}")
    return name


def intermediate(name: str, lam: float, r: Tensor, state: PotentialState) -> tuple[Tensor, PotentialState]:
    """log G_s for intermediate rewards ``r`` (P, K), and the updated state."""
    r = r.float()
    first = state.last is None
    running_max = r if first else torch.maximum(state.running_max, r)
    running_sum = r if first else state.running_sum + r
    if name == "max":
        log_g = lam * running_max
    elif name == "difference":
        log_g = lam * (r if first else r - state.last)
    elif name == "sum":
        log_g = lam * running_sum
    elif name == "immediate":
        log_g = lam * r
    elif name == "tempered":
        log_g = lam * r if first else lam * r - state.log_prod
    else:
        raise ValueError(f"unknown potential {name!r}; choose one of {', '.join(POTENTIALS)}")
    log_prod = log_g if first else state.log_prod + log_g
    return log_g, PotentialState(last=r, running_max=running_max, running_sum=running_sum, log_prod=log_prod)


def final(lam: float, r: Tensor, state: PotentialState) -> Tensor:
    """The last log-potential λ·r(x0) − Σ log G along the lineage, so that Π G = exp(λ·r(x0))."""
    r = r.float()
    return lam * r if state.log_prod is None else lam * r - state.log_prod


__all__ = ["POTENTIALS", "PotentialState", "check_potential", "intermediate", "final"]
