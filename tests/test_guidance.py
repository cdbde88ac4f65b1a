"""Reward-gradient guidance (DPS / Universal guidance) on the exact 2-D harness."""
import pytest
import torch

from steer.samplers.best_of_n import best_of_n
from steer.samplers.guidance import clip_rows, reward_guidance
from steer.zoo.gmm import GMMProcess, PointReward, quadratic_reward

KINDS = ["diffusion", "flow"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", KINDS)
def test_scale_zero_is_the_plain_sampler(kind):
    proc, reward = GMMProcess(kind=kind, num_inference_steps=8), quadratic_reward()
    for level in (0.0, 0.5):
        a = reward_guidance(proc, reward, ["a", "b"], generator=_gen(1), n=3, scale=0.0, noise_level=level)
        b = best_of_n(proc, reward, ["a", "b"], generator=_gen(1), n=3, noise_level=level)
        assert torch.equal(a.latents, b.latents) and torch.equal(a.candidate_rewards, b.candidate_rewards)
        assert a.trace.backward_calls == 0 and a.trace.reward_calls == 6


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("schedule,scale", [("variance", 1.0), ("noise", 0.2), ("constant", 0.05)])
def test_guidance_raises_the_mean_reward_over_the_same_noise(kind, schedule, scale):
    proc, reward = GMMProcess(kind=kind, num_inference_steps=20), quadratic_reward()
    level = 0.0 if schedule != "variance" else 1.0 if kind == "diffusion" else 0.7
    plain = reward_guidance(proc, reward, ["p"], generator=_gen(0), n=512, scale=0.0, noise_level=level)
    guided = reward_guidance(proc, reward, ["p"], generator=_gen(0), n=512, scale=scale, schedule=schedule,
                             noise_level=level)
    before, after = plain.candidate_rewards.mean().item(), guided.candidate_rewards.mean().item()
    assert torch.isfinite(guided.candidate_rewards).all()
    assert after > before + 1.0, (before, after)


def test_accounting_counts_a_forward_and_a_backward_per_step():
    S, n, P = 6, 3, 2
    proc = GMMProcess(kind="diffusion", num_inference_steps=S)
    res = reward_guidance(proc, quadratic_reward(), ["a", "b"], generator=_gen(0), n=n, scale=1.0)
    assert res.trace.nfe == P * n * S
    assert res.trace.backward_calls == S
    assert res.trace.reward_calls == P * n * (S + 1)
    assert res.candidates.shape[:2] == (P, n)


def test_grad_clip_bounds_the_shift():
    g = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    assert torch.allclose(clip_rows(g, 1.0), torch.tensor([[0.6, 0.8], [0.3, 0.4]]))
    assert clip_rows(g, None) is g
    proc, reward = GMMProcess(kind="diffusion", num_inference_steps=8), quadratic_reward()
    plain = reward_guidance(proc, reward, ["p"], generator=_gen(2), n=16, scale=0.0)
    tiny = reward_guidance(proc, reward, ["p"], generator=_gen(2), n=16, scale=10.0, grad_clip=1e-9)
    free = reward_guidance(proc, reward, ["p"], generator=_gen(2), n=16, scale=10.0)
    assert torch.allclose(tiny.candidate_rewards, plain.candidate_rewards, atol=1e-5)
    assert not torch.allclose(free.candidate_rewards, plain.candidate_rewards, atol=1e-3)


def test_refusals_are_one_line():
    proc = GMMProcess(kind="diffusion", num_inference_steps=4)
    nondiff = PointReward(lambda p: -p.sum(-1), name="flat", differentiable=False)
    with pytest.raises(ValueError, match=r"^reward_guidance: reward 'flat' is not differentiable[^\n]*$"):
        reward_guidance(proc, nondiff, ["p"])
    with pytest.raises(ValueError, match="schedule='variance'.*noise_level=0"):
        reward_guidance(proc, quadratic_reward(), ["p"], noise_level=0.0)
    with pytest.raises(Exception, match="reward_guidance: unknown schedule .cosine."):
        reward_guidance(proc, quadratic_reward(), ["p"], schedule="cosine")
    with pytest.raises(Exception, match="reward_guidance: grad_clip must be"):
        reward_guidance(proc, quadratic_reward(), ["p"], grad_clip=0.0)
