"""The exact checker agrees with rendered ground truth and rejects corrupted captions."""
import pytest
import torch

from steer.zoo.shapes import checker, world
from steer.zoo.shapes.evaluate import checker_rates as rates, degrade


@pytest.fixture(scope="module")
def scenes():
    a, ca = world.batch(150, seed=11, split="test")
    b, cb = world.batch(150, seed=11, split="heldout")
    return torch.cat([a, b]), ca + cb


def _assert_rates(result):
    for key, (hits, total) in result.items():
        assert total > 0 and hits / total >= 0.99, (key, hits, total)


def test_agreement_and_rejection_on_rendered_scenes(scenes):
    _assert_rates(rates(*scenes))


def test_tolerates_blur_noise_and_dim_colours(scenes):
    images, captions = scenes
    _assert_rates(rates(degrade(images[:120], torch.Generator().manual_seed(0)), captions[:120]))


def test_describe_finds_the_objects():
    img = world.render([world.Obj("red", "circle", 8.0, 8.0, 9.0), world.Obj("yellow", "triangle", 10.0, 24.0, 10.0)])
    found = sorted((d.color, d.shape) for d in checker.describe(img))
    assert found == [("red", "circle"), ("yellow", "triangle")]
    assert checker.check(img[None], ["a red circle above a yellow triangle"]).tolist() == [True]
    assert checker.check(img[None], ["a red circle to the left of a yellow triangle"]).tolist() == [False]
    assert checker.check(img[None], ["a yellow triangle above a red circle"]).tolist() == [False]


def test_blank_and_noise_images_match_nothing():
    blank = torch.zeros(2, 3, 32, 32)
    noise = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    caps = ["a red circle", "two blue squares"]
    assert not checker.check(blank, caps).any()
    assert not checker.check(noise, caps).any()


def test_parse_accepts_short_relation_words_and_rejects_bad_captions():
    assert checker.parse("A red circle left of a blue square.").relation == "to the left of"
    assert checker.parse("three green triangles").objects == (("green", "triangle"),) * 3
    with pytest.raises(ValueError, match="outside the shapes grammar"):
        checker.parse("a purple hexagon")
    with pytest.raises(ValueError, match="one caption per image"):
        checker.check(torch.zeros(2, 3, 32, 32), ["a red circle"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        checker.check(torch.zeros(3, 32, 32), ["a red circle"])
