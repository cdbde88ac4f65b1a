"""Resampling schemes: unbiased counts, zero-weight particles never chosen, float32 cumulative sums
that end below 1, ESS, and group-preserving reindexing."""
import math

import pytest
import torch

from steer.samplers import resampling as rs

SCHEMES = sorted(rs.SCHEMES)


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_counts_match_weights_in_expectation(scheme):
    """Every row is an independent group with the same weights; mean offspring counts ≈ n·w_k."""
    K, n, R = 7, 7, 20000
    w = torch.tensor([0.31, 0.02, 0.17, 0.0, 0.25, 0.05, 0.20])
    log_w = torch.log(w).expand(R, K) + torch.randn(R, 1, generator=_gen(1))  # unnormalized per row
    anc = rs.get_scheme(scheme)(log_w, n, _gen(2))  # (R, n)
    assert anc.shape == (R, n) and anc.dtype == torch.long
    counts = torch.zeros(R, K).scatter_add_(1, anc, torch.ones(R, n))  # (R, K)
    assert torch.all(counts.sum(1) == n)
    mean, se = counts.mean(0), counts.std(0) / math.sqrt(R)
    assert torch.all((mean - n * w).abs() <= 5 * se + 1e-3), (mean, n * w)
    if scheme == "systematic":  # each count is ⌊n·w⌋ or ⌈n·w⌉
        assert torch.all((counts - n * w).abs() < 1 + 1e-4)
    if scheme == "residual":  # at least the ⌊n·w⌋ deterministic copies
        assert torch.all(counts >= (n * w).floor())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_zero_weight_particles_are_never_chosen(scheme):
    K, R = 9, 5000
    log_w = torch.randn(R, K, generator=_gen(3))
    zero = torch.tensor([0, 4, 7, 8])  # first and last included
    log_w[:, zero] = -math.inf
    anc = rs.get_scheme(scheme)(log_w, 2 * K, _gen(4))
    assert not torch.isin(anc, zero).any()
    assert set(anc.unique().tolist()) == {1, 2, 3, 5, 6}


def test_float32_cumsum_ending_below_one_is_handled():
    """Many equal float32 weights: the raw cumulative sum ends below 1, and a uniform between that end
    and 1 must still land on a (positive-weight) particle, never out of range."""
    K = 1000
    log_w = torch.zeros(1, K)
    raw = torch.cumsum(torch.exp(rs.normalize(log_w)), -1)
    assert raw[0, -1] < 1  # the precondition this test is about
    u_max = torch.tensor([[1 - 2**-24, float(raw[0, -1]) + (1 - float(raw[0, -1])) / 2]])
    assert torch.equal(rs._invert(log_w, u_max), torch.tensor([[K - 1, K - 1]]))
    # with trailing zero-weight particles the top uniforms go to the last positive one
    log_w[0, -3:] = -math.inf
    assert torch.equal(rs._invert(log_w, u_max), torch.tensor([[K - 4, K - 4]]))
    for scheme in SCHEMES:
        anc = rs.get_scheme(scheme)(log_w, K, _gen(5))
        assert int(anc.max()) <= K - 4 and int(anc.min()) >= 0


def test_ess_extremes_and_scale_invariance():
    assert torch.allclose(rs.ess(torch.zeros(3, 8)), torch.full((3,), 8.0))
    one_hot = torch.full((8,), -math.inf)
    one_hot[3] = 0.0
    assert float(rs.ess(one_hot)) == pytest.approx(1.0)
    lw = torch.randn(5, 16, generator=_gen(6))
    assert torch.allclose(rs.ess(lw), rs.ess(lw + 1000.0), rtol=1e-3)  # no overflow (float32 input rounding only)
    w = torch.softmax(lw, -1)
    assert torch.allclose(rs.ess(lw), 1 / (w**2).sum(-1), rtol=1e-5)


def test_flat_ancestors_and_reindex_never_mix_prompts():
    P, K = 3, 4
    log_w = torch.randn(P, K, generator=_gen(7))
    anc = rs.systematic(log_w, K, _gen(8))
    flat = rs.flat_ancestors(anc)
    owner = torch.arange(P).repeat_interleave(K)  # prompt of each flat particle
    (moved,) = rs.reindex(flat, owner)
    assert torch.equal(moved, owner)
    assert rs.reindex(flat, None) == (None,)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown resampling scheme 'fancy'.*systematic"):
        rs.get_scheme("fancy")
    with pytest.raises(FloatingPointError, match="NaN"):
        rs.systematic(torch.tensor([[0.0, float("nan")]]), 2)
    with pytest.raises(FloatingPointError, match="zero weight"):
        rs.multinomial(torch.full((1, 3), -math.inf), 3)
