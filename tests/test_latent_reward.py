"""Rewards declared ``space="latent"`` score x̂0 latents as they are: FK, beam and the other methods
skip the VAE decode when scoring (the final images are still decoded once, for the result)."""
import pytest
import torch

import steer
import steer.errors
from steer.rewards import WeightedSum, as_reward
from steer.pipelines import from_pipe
from tests.fixtures.tiny import build
from tests.rewards_for_tests import brightness

PROMPTS = ["a red circle", "a blue square"]


def first_channel(latents, prompts):
    """Mean of the first latent channel: a cheap, differentiable latent statistic."""
    return latents[:, 0].float().mean(dim=tuple(range(1, latents.dim() - 1)))


first_channel.space = "latent"
first_channel.differentiable = True


class _Counted:
    """The tiny SD process with its real decode, counting the latents it decodes."""

    def __init__(self, steps=4):
        self.process = from_pipe(build("sd"), num_inference_steps=steps, guidance_scale=1.0)
        self.decoded = 0
        real = self.process.decode

        def decode(x0):
            self.decoded += x0.shape[0]
            return real(x0)

        self.process.decode = decode


@pytest.mark.parametrize("method, options, final", [
    ("fk", {"particles": 3}, 3),  # the final particles, decoded once for the result
    ("beam", {"beam_width": 2, "candidates": 2}, 2),
    ("best_of_n", {"n": 3}, 3),
])
def test_a_latent_reward_never_makes_a_method_decode_to_score(method, options, final):
    latent, image = _Counted(), _Counted()
    a = steer.generate(latent.process, PROMPTS, method=method, reward=first_channel, seed=1, **options)
    steer.generate(image.process, PROMPTS, method=method, reward=brightness, seed=1, **options)
    assert latent.decoded <= final * len(PROMPTS) + len(PROMPTS)  # the output images only
    if method != "best_of_n":
        assert image.decoded > latent.decoded  # an image reward decodes x̂0 at its scoring steps
    torch.testing.assert_close(a.rewards, first_channel(a.latents, PROMPTS))
    assert a.images.shape[1] == 3


def test_reno_ascends_a_latent_reward():
    c = _Counted(steps=2)
    out = steer.generate(c.process, PROMPTS[:1], method="reno", reward=first_channel, iterations=3, seed=0)
    assert torch.isfinite(out.rewards).all() and out.images.shape[1] == 3


def test_declaring_the_space():
    assert as_reward(first_channel).space == "latent"
    assert as_reward(brightness, space="latent").space == "latent" and as_reward(brightness).space == "image"
    with pytest.raises(ValueError, match="space must be 'image' or 'latent'"):
        as_reward(brightness, space="pixels")
    with pytest.raises(ValueError, match="mixes latent rewards .* with image rewards"):
        WeightedSum([(1.0, as_reward(first_channel)), (0.5, as_reward(brightness))])
    assert WeightedSum([(1.0, as_reward(first_channel))]).space == "latent"


def test_an_eval_reward_must_read_images():
    c = _Counted(steps=2)
    with pytest.raises(steer.errors.SteerError, match="reads latents; an eval reward scores the returned images"):
        steer.generate(c.process, PROMPTS, method="best_of_n", reward=brightness, eval_reward=first_channel, n=2)
