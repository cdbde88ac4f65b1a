"""The shapes world: determinism, grammar coverage, held-out split, and scene geometry."""
import itertools

import numpy as np
import pytest
import torch

from steer.zoo.shapes import world


def test_same_seed_same_scenes_and_different_seed_differs():
    a, ca = world.batch(24, seed=3)
    b, cb = world.batch(24, seed=3)
    c, cc = world.batch(24, seed=4)
    assert torch.equal(a, b) and ca == cb
    assert not torch.equal(a, c)
    assert a.shape == (24, 3, 32, 32) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_scene_index_is_random_access():
    full, caps = world.batch(10, seed=1, split="test")
    tail, tcaps = world.batch(3, seed=1, split="test", start=7)
    assert torch.equal(full[7:], tail) and caps[7:] == tcaps


def test_size_is_a_parameter():
    img, cap = next(world.dataset(1, seed=0, size=64))
    assert img.shape == (3, 64, 64)


def test_train_never_yields_heldout_captions_and_heldout_only_them():
    _, train = world.batch(300, seed=0, split="train")
    _, held = world.batch(60, seed=0, split="heldout")
    assert not set(train) & world.HELDOUT_CAPTIONS
    assert set(held) <= world.HELDOUT_CAPTIONS
    assert len([c for c in world.HELDOUT_CAPTIONS if len(c.split()) > 3]) >= 100
    kinds = {k for k in ("single", "relation", "count") for c in train if c in world.all_captions()[k]}
    assert kinds == {"single", "relation", "count"}


def test_objects_do_not_overlap_and_relations_hold_with_margin():
    for i in range(60):
        scene = world.sample_scene(0, i, "train")
        covs = [world.coverage(o, 32) for o in scene.objects]
        for p, q in itertools.combinations(covs, 2):
            assert float((p * q).sum()) == 0.0
        if scene.relation is not None:
            ca, cb = (world.centroid(c) for c in covs)
            assert world.relation_holds(ca, cb, scene.relation, world.RELATION_MARGIN * 32, world.RELATION_DOMINANCE)
            assert not world.relation_holds(ca, cb, world.INVERSE[scene.relation], 0.0, 0.0)


def test_render_colours_are_the_palette():
    obj = world.Obj("blue", "square", 16.0, 16.0, 10.0)
    img = world.render([obj])
    assert np.allclose(img[:, 16, 16].numpy(), world.COLORS["blue"])
    assert float(img[:, 1, 1].abs().sum()) == 0.0


def test_mismatches_never_contain_the_caption():
    for cap in list(world.HELDOUT_CAPTIONS)[:20] + world.all_captions()["single"]:
        wrong = world.mismatches(cap)
        assert all(cap not in v for v in wrong.values())
        assert sum(len(v) for v in wrong.values()) >= 5


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="choose from"):
        world.sample_scene(0, 0, "validation")


def test_canonical_identifies_equivalent_relational_captions_only():
    from steer.zoo.shapes.world import canonical

    a = "a red circle above a blue square"
    assert canonical(a) == canonical("a blue square below a red circle")
    assert canonical("a red circle to the left of a blue square") == canonical("a blue square to the right of a red circle")
    assert canonical(a) != canonical("a red circle below a blue square")
    assert canonical(a) != canonical("a blue square above a red circle")
    assert canonical("two green triangles") == "two green triangles" and canonical("a red circle") == "a red circle"


def test_equivalent_and_perpendicular_spellings():
    cap = "a red circle above a blue square"
    assert world.equivalent(cap) == "a blue square below a red circle"
    assert world.equivalent(world.equivalent(cap)) == cap and world.equivalent("a red circle") == "a red circle"
    assert world.canonical(cap) == world.canonical(world.equivalent(cap))
    assert world.perpendicular(cap) == ["a red circle to the left of a blue square",
                                        "a red circle to the right of a blue square"]
    assert world.perpendicular("two blue squares") == []
