"""SVDD-PM (Li et al. 2024) on the exact 2-D harness: α = 0 is beam search with B = 1, the value is
r(decode(x̂0)) of each candidate, α > 0 selects by sampling ∝ exp(v/α)."""
import pytest
import torch

from steer import chain
from steer.search import beam
from steer.search.svdd import select, svdd
from steer.zoo.gmm import GMMProcess, PointReward, quadratic_reward


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_svdd_with_alpha_zero_is_beam_search_with_one_beam(kind):
    proc, reward = GMMProcess(kind=kind, num_inference_steps=6), quadratic_reward()
    a = svdd(proc, reward, ["a", "b"], generator=_gen(3), candidates=5)
    b = beam(proc, reward, ["a", "b"], generator=_gen(3), beam_width=1, candidates=5)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.images, b.images)
    assert torch.equal(a.rewards, b.rewards)
    assert (a.trace.nfe, a.trace.reward_calls) == (b.trace.nfe, b.trace.reward_calls) == (2 * 5 * 6, 2 * 5 * 7)


def test_svdd_values_each_candidate_by_the_reward_of_its_x0_prediction():
    """Replays two steps by hand: M prior draws valued by r(x̂0(x_T)), the argmax kept; M kernel draws
    from it valued by r(x̂0(x_{T-1})) at the next step's denoiser call, the argmax kept."""
    S, M = 3, 4
    proc, reward = GMMProcess(kind="diffusion", num_inference_steps=S), quadratic_reward()
    seen = []
    svdd(proc, reward, ["p"], generator=_gen(7), candidates=M, callback=seen.append)
    g = _gen(7)
    cond = proc.prepare(["p"] * M)
    x = proc.init_noise(M, g)
    pred = proc.predict(x, 0, cond)
    v = reward(proc.decode(pred.x0), ["p"] * M)
    k = int(v.argmax())
    prop = chain.propose(proc, x[k:k + 1], 0, proc.prepare(["p"]), noise_level=1.0)  # η = 1 at the kept x_T
    x1 = chain.sample(prop.repeat(M).kernel, g)  # (M, 2) candidates from the same x_T
    v1 = reward(proc.decode(proc.predict(x1, 1, cond).x0), ["p"] * M)
    k1 = int(v1.argmax())
    assert torch.allclose(seen[0].x, x1[k1:k1 + 1], atol=1e-6)
    assert torch.allclose(seen[0].extra["rewards"].flatten(), v1[k1:k1 + 1], atol=1e-6)
    assert float(v1[k1]) == pytest.approx(float(v1.max()))


def test_select_pins_argmax_and_soft_selection_on_small_tensors():
    v = torch.tensor([0.0, 2.0, 1.0, 5.0, -1.0, 4.0])  # prompt 0: rows 0-2, prompt 1: rows 3-5
    assert select(v, 2, 0.0).tolist() == [1, 3]
    draws = torch.stack([select(v, 2, 1.0, _gen(s)) for s in range(4000)])  # (4000, 2)
    freq0 = torch.bincount(draws[:, 0], minlength=3).float() / 4000
    assert torch.allclose(freq0, torch.softmax(v[:3], 0), atol=0.03)
    assert set(draws[:, 1].tolist()) <= {3, 4, 5}  # selection never mixes prompts
    assert select(v, 2, 1e-4, _gen(0)).tolist() == [1, 3]  # α -> 0 is the argmax


def test_soft_selection_differs_from_beam_and_a_large_alpha_keeps_the_prior():
    proc, reward = GMMProcess(kind="diffusion", num_inference_steps=10), quadratic_reward()
    hard = svdd(proc, reward, ["p"] * 64, generator=_gen(0), candidates=4)
    soft = svdd(proc, reward, ["p"] * 64, generator=_gen(0), candidates=4, alpha=1.0)
    flat = svdd(proc, reward, ["p"] * 64, generator=_gen(0), candidates=4, alpha=1e6)
    assert not torch.equal(hard.latents, soft.latents)
    assert hard.rewards.mean() > soft.rewards.mean() > flat.rewards.mean()


def test_svdd_refuses_bad_options():
    proc = GMMProcess(kind="diffusion", num_inference_steps=4)
    with pytest.raises(Exception, match="svdd: alpha must be"):
        svdd(proc, quadratic_reward(), ["p"], alpha=-1.0)
    with pytest.raises(ValueError, match="svdd: noise_level=0"):
        svdd(proc, quadratic_reward(), ["p"], noise_level=0.0)
    nondiff = PointReward(lambda p: -p.sum(-1), differentiable=False)  # derivative-free: accepted
    assert svdd(proc, nondiff, ["p"], candidates=2, generator=_gen(0)).rewards.shape == (1,)
