"""CARINOX (Kasaei et al. 2025) on the exact harness: one seed is ReNO itself, more seeds explore (the best
over seeds and iterations is kept), and the category-aware reward scores each prompt by its category."""
import pytest
import torch

from steer.budget import Budget
from steer.rewards.category import CategoryReward
from steer.samplers.carinox import carinox
from steer.samplers.reno import reno
from steer.zoo.gmm import GMMProcess, PointReward, quadratic_reward


def _gen(seed):
    return torch.Generator().manual_seed(seed)


LEFT = PointReward(lambda p: -p[:, 0], name="left")
RIGHT = PointReward(lambda p: p[:, 0], name="right")


def test_one_seed_is_reno():
    proc = GMMProcess(kind="flow", num_inference_steps=2)
    a = carinox(proc, quadratic_reward(), ["a", "b"], generator=_gen(1), seeds=1, iterations=4, lr=0.5)
    b = reno(proc, quadratic_reward(), ["a", "b"], generator=_gen(1), iterations=4, lr=0.5)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.rewards, b.rewards)
    assert torch.equal(a.initial_noise, b.initial_noise)


def test_exploration_keeps_the_best_seed_and_raises_the_reward():
    """Measured (32 prompts, 2 flow steps, 5 iterations at lr 0.5): 1 seed -7.47, 4 seeds -2.54."""
    proc = GMMProcess(kind="flow", num_inference_steps=2)
    one = carinox(proc, quadratic_reward(), ["p"] * 32, generator=_gen(0), seeds=1, iterations=5, lr=0.5)
    four = carinox(proc, quadratic_reward(), ["p"] * 32, generator=_gen(0), seeds=4, iterations=5, lr=0.5)
    assert four.candidate_rewards.shape == (32, 20)
    assert torch.equal(four.rewards, four.candidate_rewards.max(dim=1).values)
    assert four.trace.nfe == 32 * 4 * 5 * 2 and four.trace.reward_calls == 32 * 4 * 5
    assert four.rewards.mean() > one.rewards.mean() + 2.0
    assert torch.allclose(proc.decode(four.latents).float(), four.images)


def test_category_reward_weights_each_prompt_by_its_categories():
    cat = CategoryReward({"L": LEFT, "R": RIGHT}, {"go left": "L", "go right": "R", "mixed": {"L": 0.25, "R": 0.75}},
                         default=quadratic_reward())
    pts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.5, 1.5]])
    images = torch.cat([pts, torch.zeros(4, 1)], 1)[:, :, None, None]
    r = cat(images, ["go left", "go right", "mixed", "other"])
    # 'mixed': 0.25·(−2) + 0.75·2; 'other' falls back to −‖x − (1.5, 1.5)‖²
    assert torch.allclose(r, torch.tensor([-1.0, 1.0, 0.5 * 2.0, 0.0]))
    with pytest.raises(ValueError, match="no category for prompt 'other' and no default reward"):
        CategoryReward({"L": LEFT}, {"go left": "L"})(images[:1], ["other"])


def test_carinox_steers_each_prompt_with_its_category_reward():
    proc = GMMProcess(kind="flow", num_inference_steps=2)
    rule = lambda p: "L" if "left" in p else ("R" if "right" in p else None)  # noqa: E731
    res = carinox(proc, quadratic_reward(), ["go left", "go right", "other"], generator=_gen(0), seeds=2,
                  iterations=10, lr=0.5, category_rewards={"L": LEFT, "R": RIGHT}, categorize=rule)
    x = res.latents[:, 0]
    assert x[0] < -1.0 and x[1] > 1.0  # each steered toward its own category's reward
    assert torch.allclose(res.rewards[:2], torch.stack([-x[0], x[1]]), atol=1e-5)


def test_carinox_refuses_bad_options_and_checks_its_budget():
    proc = GMMProcess(kind="flow", num_inference_steps=2)
    with pytest.raises(ValueError, match="carinox: category_rewards and categorize go together"):
        carinox(proc, quadratic_reward(), ["p"], category_rewards={"L": LEFT})
    with pytest.raises(TypeError, match="the reward of category 'L' is not callable"):
        carinox(proc, quadratic_reward(), ["p"], category_rewards={"L": 3}, categorize=lambda p: "L")
    with pytest.raises(ValueError, match="needs 300 denoiser calls per prompt but the budget allows 100"):
        carinox(proc, quadratic_reward(), ["p"], budget=Budget(nfe=100))
    with pytest.raises(Exception, match="carinox: seeds must be an integer >= 1"):
        carinox(proc, quadratic_reward(), ["p"], seeds=0)
