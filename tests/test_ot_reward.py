"""The PISCES-style OT reward (steer.rewards.ot): the partial plan moves exactly ``mass``, the semantic
term is the plan-weighted cosine, the distributional term follows the batch's optimal matching, gradients
reach the pixels, ``shapes-ot`` is registered, and a missing POT is one line naming the install."""
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("ot")

from steer.rewards.encoders import ClipEncoder  # noqa: E402
from steer.rewards.ot import OTClipReward, distributional, semantic  # noqa: E402
from steer.rewards.registry import load  # noqa: E402


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_partial_plan_moves_the_mass_and_prefers_the_cheapest_pairs():
    import ot

    tokens, patches = _unit(5, 16, 0), _unit(9, 16, 1)
    cos = tokens @ patches.T
    a, b = torch.full((5,), 1 / 5), torch.full((9,), 1 / 9)
    plan = ot.partial.entropic_partial_wasserstein(a, b, 1 - cos, 0.05, m=torch.tensor(0.5), method="sinkhorn_log",
                                                   numItermax=100, stopThr=1e-9)
    assert float(plan.sum()) == pytest.approx(0.5, abs=1e-4)
    assert (plan.sum(1) <= a + 1e-5).all() and (plan.sum(0) <= b + 1e-5).all()
    assert float(semantic(tokens, patches, mass=0.5, reg=0.05, iterations=100)) == pytest.approx(
        float((plan * cos).sum() / 0.5), abs=1e-5)
    # partial transport keeps the best-matching pairs: with every token present among the patches, and
    # mass <= the tokens' share, the semantic term reaches the perfect match (cos = 1) as reg -> 0
    same = torch.cat([tokens, _unit(4, 16, 2)])  # (9, D): the 5 tokens and 4 other patches
    assert float(semantic(tokens, same, mass=0.5, reg=0.01, iterations=500)) > 0.97
    assert float(semantic(tokens, same, mass=0.5, reg=0.01, iterations=500)) > float(
        semantic(tokens, patches, mass=0.5, reg=0.01, iterations=500)) + 0.5


def test_distributional_term_follows_the_optimal_matching_of_the_batch():
    texts = _unit(3, 8, 3)
    assert torch.allclose(distributional(texts[:1], texts[:1]), torch.ones(1), atol=1e-6)  # B = 1: the cosine
    images = texts[[2, 0, 1]]  # the right images, in another order
    assert torch.allclose(distributional(images, texts), torch.ones(3), atol=1e-5)  # matched through the plan
    one = _unit(1, 8, 4)
    assert torch.allclose(distributional(one, texts[:1]), (one * texts[:1]).sum(-1), atol=1e-6)


def test_shapes_ot_is_registered_differentiable_and_scores_like_the_math():
    reward = load("shapes-ot")
    assert reward.name == "shapes-ot" and reward.differentiable
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    r = reward(images, ["a red circle above a blue square", "a green triangle"])
    r.sum().backward()
    assert r.shape == (2,) and torch.isfinite(r).all() and images.grad.abs().sum() > 0
    semantic_only = OTClipReward(reward.encoder, distribution_weight=0.0)
    with torch.no_grad():  # r = scale·(S_sem + S_dist), and S_dist = cosine for a batch of one
        x, caption = images[:1].detach(), ["a green triangle"]
        one = reward(x, caption) - semantic_only(x, caption)
        model = reward.encoder.model
        cos = F.cosine_similarity(reward.encoder.encode_image(images[:1].detach()),
                                  reward.encoder.encode_text(["a green triangle"]))
    assert torch.allclose(one, model.logit_scale.exp().clamp(max=100) * cos, rtol=1e-4, atol=1e-4)


def test_generic_form_on_a_tiny_transformers_clip_and_open_clip_refused():
    from tests.fixtures.rewards import tiny_open_clip, tiny_transformers_clip

    model, tok = tiny_transformers_clip()
    reward = OTClipReward.from_model(model, tok)
    assert reward.name == "clip-ot" and reward(torch.rand(2, 3, 40, 40), ["a cat", "a dog"]).shape == (2,)
    oc, oc_tok = tiny_open_clip()
    with pytest.raises(ValueError, match="transformers CLIPModel; open_clip models are not supported"):
        OTClipReward(ClipEncoder(oc, oc_tok))
    with pytest.raises(ValueError, match="clip-ot: mass must be in"):
        OTClipReward(ClipEncoder(model, tok), mass=1.5)


def test_missing_pot_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ot", None)  # as if POT were not installed
    with pytest.raises(ImportError, match=r"need the POT library: pip install steer\[ot\]"):
        load("shapes-ot")
