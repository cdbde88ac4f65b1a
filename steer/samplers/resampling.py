"""Resampling schemes as pure functions of log-weights, the effective sample size, and reindexing.

Every scheme has the head ``scheme(log_w, n, generator) -> ancestors``: ``log_w`` is (..., K)
(one row per independent group, e.g. per prompt; rows are never mixed), ``ancestors`` is
(..., n) long, indices into the last dimension. Weights are normalized with ``logsumexp`` in
float32; ancestors come from inverting the cumulative sum with ``searchsorted``. A float32
cumulative sum can end a little below 1: it is divided by its own last entry (exactly 1.0 after
the division), so every uniform in [0, 1) lands on a particle, and a zero-weight particle (a flat
stretch of the cumulative sum) can never be picked; a uniform that rounds up to 1 goes to the last
particle with positive weight. References: Douc, Cappé & Moulines 2005,
"Comparison of resampling schemes for particle filtering"; Chopin & Papaspiliopoulos 2020, ch. 9.

==================  ====================================================================
``multinomial``     n i.i.d. uniforms
``stratified``      u_k = (k + U_k)/n, one uniform per stratum
``systematic``      u_k = (k + U)/n, one uniform per group (lowest variance in practice)
``residual``        ⌊n·w_k⌋ copies of particle k, the remainder multinomial on n·w_k − ⌊n·w_k⌋
==================  ====================================================================
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor


def normalize(log_w: Tensor) -> Tensor:
    """Normalized log-weights log w_k − logsumexp(log w), float32, over the last dimension."""
    log_w = log_w.float()
    return log_w - torch.logsumexp(log_w, dim=-1, keepdim=True)


def ess(log_w: Tensor) -> Tensor:
    """Effective sample size (Σw)² / Σw² = exp(−lse(2·log w̄)) with w̄ the normalized weights, per group (...,)."""
    return torch.exp(-torch.logsumexp(2 * normalize(log_w), dim=-1))


def _uniform(shape: tuple[int, ...], generator: Optional[torch.Generator], device) -> Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device)


def _cdf(log_w: Tensor) -> Tensor:
    """Cumulative normalized weights (..., K), forced to end at exactly 1."""
    cdf = torch.cumsum(torch.exp(normalize(log_w)), dim=-1)  # (..., K)
    return cdf / cdf[..., -1:]


def _invert(log_w: Tensor, u: Tensor) -> Tensor:
    """Ancestors for uniforms ``u`` (..., n) in [0, 1]: the first k with cdf_k > u, capped at the first
    k with cdf_k = 1 (the last positive weight), which also catches a float32 (k + U)/n rounding to 1."""
    _check(log_w)
    cdf = _cdf(log_w).contiguous()  # (..., K)
    idx = torch.searchsorted(cdf, u.contiguous(), right=True)  # (..., n)
    last = torch.searchsorted(cdf, torch.ones_like(cdf[..., :1]), right=False)  # (..., 1)
    return torch.minimum(idx, last)


def multinomial(log_w: Tensor, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """n independent draws from the weights."""
    return _invert(log_w, _uniform((*log_w.shape[:-1], n), generator, log_w.device))


def stratified(log_w: Tensor, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """One draw in each stratum [k/n, (k+1)/n)."""
    u = _uniform((*log_w.shape[:-1], n), generator, log_w.device)
    k = torch.arange(n, device=log_w.device, dtype=torch.float32)
    return _invert(log_w, (k + u) / n)


def systematic(log_w: Tensor, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """The grid (k + U)/n with a single uniform U per group."""
    u = _uniform((*log_w.shape[:-1], 1), generator, log_w.device)
    k = torch.arange(n, device=log_w.device, dtype=torch.float32)
    return _invert(log_w, (k + u) / n)


def residual(log_w: Tensor, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """⌊n·w_k⌋ deterministic copies, then the R = n − Σ⌊n·w_k⌋ remaining draws multinomial on the
    residual weights n·w_k − ⌊n·w_k⌋. Ancestors come out sorted within each group."""
    _check(log_w)
    K = log_w.shape[-1]
    lead = log_w.shape[:-1]
    nw = torch.exp(normalize(log_w)) * n  # (..., K)
    counts = (nw + 1e-6 * n).floor()  # tolerance: float32 gives 5·0.2 = 0.99999994, which is one copy
    rest = (nw - counts).clamp_min(0)  # (..., K)
    remaining = (n - counts.sum(-1).long()).clamp_min(0)  # (...,)
    # the residual draws: n candidates per group, of which only the first R are kept
    has_rest = rest.sum(-1, keepdim=True) > 0
    safe = torch.where(has_rest, rest, torch.ones_like(rest))
    draws = multinomial(torch.log(safe), n, generator)  # (..., n)
    keep = torch.arange(n, device=log_w.device) < remaining.unsqueeze(-1)  # (..., n)
    counts = counts.long().scatter_add(-1, draws, keep.long())  # (..., K)
    flat = torch.repeat_interleave(torch.arange(K, device=log_w.device).expand(*lead, K).reshape(-1),
                                   counts.reshape(-1))
    return flat.reshape(*lead, n)


SCHEMES: dict[str, Callable[..., Tensor]] = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}


def get_scheme(name: str) -> Callable[..., Tensor]:
    """The scheme called ``name``; unknown names raise with the valid choices."""
    if name not in SCHEMES:
        raise ValueError(f"unknown resampling scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    return SCHEMES[name]


def flat_ancestors(ancestors: Tensor) -> Tensor:
    """Group-local ancestors (P, K) -> indices into the prompt-major flat layout (P·K,)."""
    P, K = ancestors.shape
    offsets = torch.arange(P, device=ancestors.device).unsqueeze(1) * K  # (P, 1)
    return (ancestors + offsets).reshape(-1)


def reindex(ancestors: Tensor, *tensors: Optional[Tensor]):
    """Every per-particle tensor (P·K, ...) taken at the flat ``ancestors`` (P·K,); ``None`` passes."""
    return tuple(None if t is None else t[ancestors.to(t.device)] for t in tensors)


def _check(log_w: Tensor) -> None:
    if log_w.ndim < 1 or log_w.shape[-1] < 1:
        raise ValueError(f"log-weights must have at least one particle in the last dimension, got {tuple(log_w.shape)}")
    if torch.isnan(log_w).any():
        raise FloatingPointError("log-weights contain NaN; check the reward and the potential")
    if (log_w == float("inf")).any():
        raise FloatingPointError("log-weights contain +inf; lower the temperature lam or check the reward")
    if torch.isneginf(log_w).all(dim=-1).any():
        raise FloatingPointError("every particle of a group has zero weight (log-weight -inf); nothing to resample")
