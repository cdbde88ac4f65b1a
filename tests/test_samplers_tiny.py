"""Every sampler end to end on the tiny random-init pipelines of each family, with a tiny
differentiable reward: shapes, NFE and reward-call accounting, gradients through the chain (ReNO)."""
import importlib

import pytest
import torch

from steer.rewards.base import Reward
from steer.samplers import best_of_n, fk, reno

FAMILIES = ["sd", "sdxl", "sd3", "flux", "pixart"]
S = 3


class Brightness(Reward):
    """Mean pixel value of each image: a real, differentiable function of the pixels."""

    name, differentiable = "brightness", True

    def score(self, images, prompts):
        return images.float().mean(dim=(1, 2, 3))


def _process(family, steps):
    for module in ("tests.fixtures.tiny", f"tests.fixtures.tiny.{family}", "steer.pipelines"):
        if importlib.util.find_spec(module) is None:  # skip ONLY for a module not written yet
            pytest.skip(f"{module} is not available yet")
    from steer.pipelines import from_pipe
    from tests.fixtures import tiny

    return from_pipe(_PIPES.setdefault(family, tiny.build(family)), num_inference_steps=steps, height=32, width=32)


_PIPES: dict = {}


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("family", FAMILIES)
def test_fk_and_best_of_n_end_to_end(family):
    process, reward, prompts = _process(family, S), Brightness(), ["a red circle", "a blue square"]
    out = fk(process, reward, prompts, generator=_gen(0), particles=4)
    P, K = 2, 4
    assert out.trace.nfe_per_prompt == K * S  # one batched denoiser call per step for all particles
    assert out.trace.reward_calls_per_prompt == K * (len(range(1, 3)) + 1)  # steps 1, 2 and the end
    assert out.images.shape[:2] == (P, 3) and out.candidates.shape[:3] == (P, K, 3)
    assert torch.isfinite(out.log_weights).all() and out.latents.shape == (P, *process.latent_shape)
    assert torch.equal(out.rewards, out.candidate_rewards.max(1).values)
    assert 0 <= float(out.images.min()) and float(out.images.max()) <= 1
    bon = best_of_n(process, reward, prompts, generator=_gen(0), n=4)
    assert bon.trace.nfe_per_prompt == 4 * S and bon.trace.reward_calls_per_prompt == 4
    assert bon.candidates.shape[:3] == (P, 4, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_reno_end_to_end(family):
    process = _process(family, 1)
    out = reno(process, Brightness(), ["a red circle"], generator=_gen(1), iterations=3)
    assert out.trace.nfe_per_prompt == 3 and out.trace.backward_calls == 2
    assert out.candidate_rewards.shape == (1, 3) and torch.equal(out.rewards, out.candidate_rewards.max(1).values)
    assert out.candidate_rewards[0, -1] != out.candidate_rewards[0, 0]  # the noise moved


def test_fk_guided_proposal_runs_on_a_latent_diffusion_model():
    process = _process("sd", S)
    out = fk(process, Brightness(), ["a"], generator=_gen(2), particles=2, guidance=1.0)
    assert out.trace.backward_calls == S and out.trace.nfe_per_prompt == 2 * S
    assert torch.isfinite(out.log_weights).all()
