"""A slice of benchmarks/shapes.py: on held-out relational captions, FK steering with 8 particles
(guided by the differentiable shapes-clip reward) beats the base model's exact-checker accuracy."""
import pytest

from steer.pipelines import from_pipe
from steer.zoo.shapes import CPU_BATCH_SIZE, DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, pipeline
from steer.zoo.shapes.evaluate import diversity, judge, relational_heldout_captions, steer_captions
from steer.zoo.shapes.reward import ShapesClipReward
from steer.zoo.shapes.world import HELDOUT_CAPTIONS

CAPTIONS = 16


@pytest.fixture(scope="module")
def setting():
    process = from_pipe(pipeline(), num_inference_steps=DEFAULT_NUM_INFERENCE_STEPS,
                        guidance_scale=DEFAULT_GUIDANCE_SCALE, batch_size=CPU_BATCH_SIZE)
    return process, ShapesClipReward(), relational_heldout_captions(CAPTIONS)


def test_heldout_relational_captions_are_fixed_and_spread_over_pairs():
    caps = relational_heldout_captions()
    assert len(caps) == 104 and len(set(caps)) == 104 and set(caps) <= HELDOUT_CAPTIONS
    assert caps == relational_heldout_captions()
    pairs = {frozenset((" ".join(c.split()[1:3]), " ".join(c.split()[-2:]))) for c in caps[:CAPTIONS]}
    assert len(pairs) >= 8  # the first 16 touch many of the 13 held-out object pairs


def test_fk_with_8_particles_beats_the_base_model(setting):
    process, reward, captions = setting
    base, base_nfe, _ = steer_captions(process, captions, "best_of_n", reward, n=1)
    steered, fk_nfe, _ = steer_captions(process, captions, "fk", reward, particles=8)
    assert base_nfe == DEFAULT_NUM_INFERENCE_STEPS and fk_nfe == 8 * base_nfe
    base_acc, base_reward = judge(base, captions, reward)
    fk_acc, fk_reward = judge(steered, captions, reward)
    print(f"checker accuracy base {base_acc:.2f} -> FK(8) {fk_acc:.2f}; shapes-clip {base_reward:.2f} -> {fk_reward:.2f}")
    assert fk_reward > base_reward
    assert fk_acc > base_acc


def test_diversity_is_zero_for_identical_samples_and_positive_across_seeds(setting):
    process, reward, captions = setting
    first, _, _ = steer_captions(process, captions[:4], "best_of_n", reward, n=1, seed=0)
    again, _, _ = steer_captions(process, captions[:4], "best_of_n", reward, n=1, seed=0)
    other, _, _ = steer_captions(process, captions[:4], "best_of_n", reward, n=1, seed=7)
    assert diversity(first, again, reward) == pytest.approx(0.0, abs=1e-5)
    assert diversity(first, other, reward) > 0.01
