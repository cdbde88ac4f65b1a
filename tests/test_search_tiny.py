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


@pytest.mark.parametrize("method", ["dts", "dts_star"])
def test_tree_search_defaults_reuse_nodes_at_eight_rollouts(process, method):
    """At the budgets users run the default tree is a tree: 8 rollouts denoise fewer than 8 distinct
    x_T at the first step (the paper's C = 2, α = 0.8 would start all 8 from a fresh x_T)."""
    from steer.catalog import resolve_method

    first_step_inputs = []
    predict = process.predict

    def recording(x, i, cond, trace=None):
        if i == 0:
            first_step_inputs.extend(x.detach().clone())
        return predict(x, i, cond, trace=trace)

    process.predict = recording
    try:
        res = resolve_method(method)(process, Brightness(), ["a red circle"], generator=torch.Generator().manual_seed(0),
                                     rollouts=8)
    finally:
        del process.predict
    distinct = {tuple(x.flatten().tolist()) for x in first_step_inputs}
    assert res.tree.rollouts == [8] and 1 < len(distinct) < 8
    assert len(res.tree.roots[0].children) == len(distinct)
    paper = resolve_method(method)(process, Brightness(), ["a red circle"], generator=torch.Generator().manual_seed(0),
                                   rollouts=8, preset="paper")
    assert len(paper.tree.roots[0].children) == 8
