"""The shapes trainers' learning-rate schedule: linear warm-up, cosine decay on wall-clock progress."""
import math

import pytest

from steer.zoo.shapes.schedule import warmup_cosine


def test_warmup_is_linear_in_steps():
    assert warmup_cosine(1.0, 0, 10, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(1.0, 4, 10, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(2.0, 9, 10, 0.0) == pytest.approx(2.0)


def test_cosine_decays_to_zero_and_clips_progress():
    assert warmup_cosine(1.0, 100, 10, 0.5) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(1.0, 100, 10, 3.0) == pytest.approx(0.0, abs=1e-12)  # past the budget stays at 0
    assert warmup_cosine(1.0, 100, 10, 0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
