"""Every search method end to end on the tiny SD / SD3 / FLUX fixtures, with NFE accounting."""
import pytest
import torch

from steer.pipelines import from_pipe
from steer.rewards.base import Reward
from steer.search import beam, dts, dts_star, path_search, zero_order
from tests.fixtures import tiny

S = 4


class Brightness(Reward):
    name = "brightness"

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


# FLUX takes ~70 s here on a loaded 2-core machine; SD3 covers the same flow-matching path by default.
@pytest.fixture(scope="module", params=["sd", "sd3", pytest.param("flux", marks=pytest.mark.slow)])
def process(request):
    return from_pipe(tiny.build(request.param), num_inference_steps=S)


def test_all_search_methods_run_with_exact_nfe(process):
    reward, prompts = Brightness(), ["a red circle", "a blue square"]
    g = torch.Generator().manual_seed(0)
    res = dts_star(process, reward, prompts, generator=g, rollouts=3, branch_every=2)
    assert res.images.shape[:2] == (2, 3) and res.trace.nfe == sum(res.tree.nfe)
    assert res.trace.reward_calls_per_prompt == 3 and S <= res.trace.nfe_per_prompt <= 3 * S
    more = dts_star(process, reward, prompts, generator=g, rollouts=2, tree=res.tree, branch_every=2)
    assert (more.rewards >= res.rewards).all() and more.tree.rollouts == [5, 5]
    res = dts(process, reward, prompts, generator=g, rollouts=2, num_samples=3, branch_every=2)
    assert res.candidates.shape[:2] == (2, 3) and res.trace.nfe == sum(res.tree.nfe)
    res = beam(process, reward, prompts, generator=g, beam_width=1, candidates=2)
    assert res.trace.nfe_per_prompt == 2 * S and torch.isfinite(res.rewards).all()
    res = zero_order(process, reward, prompts, generator=g, neighbors=2, iterations=1)
    assert res.trace.nfe_per_prompt == S * (1 + 2)
    res = path_search(process, reward, prompts, generator=g, paths=1, candidates=2, delta_f=1, delta_b=2, start_step=2)
    assert res.trace.nfe_per_prompt == 2 + 2 * 2 * 2  # 2 steps to start, rounds j=2 -> 3 -> 4, 2 copies × 2 steps
    assert res.images.min() >= 0 and res.images.max() <= 1
