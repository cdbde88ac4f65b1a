"""FK's seam (``steer.samplers.fk``), the one ``steer.wrap`` shares: options resolved from a chain kind and a
step count (no process), and ``reweight`` returning its step record with the ancestors."""
import importlib

import pytest
import torch

from steer import chain, kernels
from steer.types import Prediction
from steer.zoo.gmm import quadratic_reward

fk = importlib.import_module("steer.samplers.fk")
OPTIONS = dict(particles=4, potential="max", lam=10.0, every=None, t_start=None, t_end=None, ess_threshold=0.5,
               scheme="systematic", noise_level=fk.toolkit.STOCHASTIC, eta=None, guidance=0.0)


def test_resolve_takes_a_kind_and_a_step_count():
    diffusion = fk.resolve("diffusion", 10, quadratic_reward(), **OPTIONS)
    flow = fk.resolve("flow", 10, quadratic_reward(), **OPTIONS)
    assert (diffusion.noise_level, flow.noise_level) == (1.0, 0.7)  # DDIM η = 1, the Flow-GRPO SDE a = 0.7
    assert diffusion.steps == frozenset({2, 4, 6, 8})  # S/5 ... 4S/5
    with pytest.raises(ValueError, match="eta applies to diffusion"):
        fk.resolve("flow", 10, quadratic_reward(), **{**OPTIONS, "eta": 0.5})


def test_reweight_returns_the_step_record_with_ancestors():
    P, K = 2, 4
    settings = fk.resolve("diffusion", 10, quadratic_reward(), **{**OPTIONS, "particles": K})
    x = torch.arange(P * K, dtype=torch.float32)[:, None].repeat(1, 2)  # (P·K, 2): row k holds k
    pred = Prediction(output=x.clone(), x0=x.clone(), eps=x.clone())
    move = fk.Move(x=x, prop=chain.Proposal(pred, kernels.Gaussian(mean=x.clone(), std=torch.tensor(1.0))))
    w = fk.initial_weights(P, settings)
    r = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0]])  # prompt 0: uniform (ESS = K), 1: one dominates
    moved, w2, record = fk.reweight(move, w, r, settings, torch.Generator().manual_seed(0))
    assert record.resampled.tolist() == [False, True]
    assert record.ancestors[0].tolist() == [0, 1, 2, 3]  # not resampled: each particle its own ancestor
    assert record.ancestors[1].tolist() == [1, 1, 1, 1]  # exp(50) against 1: every draw picks particle 1
    flat = fk.rs.flat_ancestors(record.ancestors)
    assert torch.equal(moved.x, x[flat]) and torch.equal(moved.prop.kernel.mean, x[flat])
    assert record.best_reward.tolist() == [0.0, 5.0] and record.lam.tolist() == [10.0, 10.0]
    assert w2.log_w[1].tolist() == [0.0] * K  # resampled weights reset
    assert set(record.trace_fields()) == {"ess_before", "resampled", "best_reward", "lam"}
