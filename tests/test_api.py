"""steer.generate: name resolution, option validation and dispatch (on the exact GMM process)."""
import pytest
import torch

import steer
from steer.api import METHODS, SteerError, resolve_method
from steer.zoo.gmm import GMMProcess, quadratic_reward


@pytest.fixture(scope="module")
def process():
    return GMMProcess(kind="diffusion", num_inference_steps=10)


def test_generate_best_of_n_on_a_process(process):
    out = steer.generate(process, ["a", "b"], method="bon", reward=quadratic_reward(), n=4, seed=3)
    assert out.images.shape[0] == 2
    assert out.rewards.shape == (2,)
    assert out.trace.nfe_per_prompt == 4 * 10


def test_same_seed_same_output_and_other_seed_differs(process):
    a = steer.generate(process, "p", method="fk", reward=quadratic_reward(), particles=4, seed=1)
    b = steer.generate(process, "p", method="fk", reward=quadratic_reward(), particles=4, seed=1)
    c = steer.generate(process, "p", method="fk", reward=quadratic_reward(), particles=4, seed=2)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_callable_reward_is_accepted(process):
    out = steer.generate(process, "p", method="best_of_n", reward=lambda im, pr: -im[:, 0, 0, 0], n=3)
    assert out.rewards.shape == (1,)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_resolves(name):
    assert callable(resolve_method(name))


def test_unknown_method_suggests_nearest(process):
    with pytest.raises(SteerError, match="did you mean 'fk'"):
        steer.generate(process, "p", method="fkk", reward=quadratic_reward())


def test_unknown_option_lists_the_method_options(process):
    with pytest.raises(SteerError, match="particles"):
        steer.generate(process, "p", method="fk", reward=quadratic_reward(), particle=4)


def test_empty_prompt_list(process):
    with pytest.raises(SteerError, match="no prompts"):
        steer.generate(process, [], method="fk", reward=quadratic_reward())


def test_bad_reward_type(process):
    with pytest.raises(SteerError, match="spec string"):
        steer.generate(process, "p", method="fk", reward=3)


def test_process_options_on_a_process_are_refused(process):
    with pytest.raises(SteerError, match="existing Process"):
        steer.generate(process, "p", method="fk", reward=quadratic_reward(), steps=5)


def test_nfe_budget_caps_every_method(process):
    with pytest.raises(Exception, match="(?i)budget"):
        steer.generate(process, "p", method="best_of_n", reward=quadratic_reward(), n=8, nfe_budget=15)
