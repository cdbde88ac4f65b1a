"""The shipped shapes CLIP: loads offline, tokenizes the grammar, is a differentiable reward that
prefers true captions over relation-swapped ones; the exact checker as a reward."""
import numpy as np
import pytest
import torch

from steer.rewards.base import Reward
from steer.zoo.shapes import world
from steer.zoo.shapes.clip import WEIGHTS_DIR, clip
from steer.zoo.shapes.clip_eval import relation_swap_accuracy
from steer.zoo.shapes.reward import ShapesCheckReward, ShapesClipReward
from steer.zoo.shapes.train_clip import batch_texts, contrastive_loss, relation_loss


@pytest.fixture(scope="module")
def shipped():
    return clip()


def test_shipped_weights_are_small_safetensors(shipped):
    size = sum(p.stat().st_size for p in WEIGHTS_DIR.iterdir())
    assert (WEIGHTS_DIR / "model.safetensors").exists() and size <= 8.5e6
    assert shipped.model.config.vision_config.image_size == 32
    assert not shipped.model.training


def test_every_grammar_word_tokenizes_without_unknowns(shipped):
    tok = shipped.tokenizer
    words = sorted({w for caps in world.all_captions().values() for c in caps for w in c.split()})
    for w in words:
        ids = tok(w).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.eos_token_id not in ids[1:-1] and tok.unk_token_id not in ids[1:-1]
        assert tok.decode(ids[1:-1]).strip() == w


def test_clip_reward_is_differentiable():
    reward = ShapesClipReward()
    images, caps = world.batch(4, seed=5, split="heldout")
    images = images.clone().requires_grad_(True)
    out = reward(images, caps)
    out.sum().backward()
    assert out.shape == (4,) and reward.differentiable
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    big = torch.nn.functional.interpolate(images.detach(), size=64, mode="nearest")
    assert reward(big, caps).shape == (4,)  # any input size is resized to the CLIP's 32x32


def test_clip_prefers_true_caption_over_relation_swap(shipped):
    for split in ("test", "heldout"):
        images, caps = world.batch(60, seed=99, split=split)
        assert relation_swap_accuracy(shipped.model, shipped.tokenizer, images, caps) >= 0.8, split


def test_check_reward_is_one_for_true_and_zero_for_swapped():
    reward = ShapesCheckReward()
    images, caps = world.batch(6, seed=2, split="heldout")
    swapped = [world.mismatches(c)["relation"][0] if world.mismatches(c)["relation"] else
               world.mismatches(c)["color"][0] for c in caps]
    assert isinstance(reward, Reward) and not reward.differentiable
    assert reward(images, caps).tolist() == [1.0] * 6
    assert reward(images, swapped).tolist() == [0.0] * 6


def test_contrastive_loss_uses_all_duplicates_as_positives():
    caps = ["a red circle", "a red circle", "two blue squares"]
    texts, pos, rows, _ = batch_texts(caps, 2, np.random.default_rng(0))
    assert pos.sum(1).tolist() == [1.0, 1.0, 1.0] and pos[0].equal(pos[1])
    assert not set(texts) & world.HELDOUT_CAPTIONS and len(rows) == 0  # no relational caption
    txt = torch.nn.functional.normalize(torch.randn(len(texts), 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    aligned = pos @ txt  # images equal to their caption's embedding
    assert contrastive_loss(10 * aligned @ txt.T, pos) < contrastive_loss(-10 * aligned @ txt.T, pos)


def test_equivalent_spellings_are_positives_not_negatives():
    caps = ["a red circle above a blue square", "a blue square below a red circle", "a green triangle"]
    texts, pos, _, _ = batch_texts(caps, 2, np.random.default_rng(0), canonical_positives=True)
    both = [texts.index(caps[0]), texts.index(caps[1])]
    assert pos[0, both].tolist() == [1.0, 1.0] and pos[0].equal(pos[1])  # one meaning, two spellings
    assert pos[2, both].tolist() == [0.0, 0.0] and pos[0].sum() == 2
    swaps = world.mismatches(caps[0])["relation"]
    assert all(pos[0, texts.index(s)] == 0 for s in swaps)  # false relations stay negatives
    single, _, _, _ = batch_texts(["a red circle above a blue square"], 0, np.random.default_rng(0), True)
    assert "a blue square below a red circle" in single  # the equivalent spelling is always shown
    exact, pos, _, _ = batch_texts(caps, 2, np.random.default_rng(0))  # the shipped recipe: exact text
    assert pos[0, exact.index(caps[1])] == 0 and pos[0].sum() == 1


def test_relation_term_contrasts_each_relational_caption_with_every_false_relation():
    caps = ["a red circle to the left of a blue square", "a green triangle", "a red circle to the left of a blue square"]
    texts, _, rows, cols = batch_texts(caps, 1, np.random.default_rng(0))
    assert rows.tolist() == [0, 2] and cols.shape == (2, 3)
    assert [texts[j] for j in cols[0]] == [caps[0], "a blue square to the left of a red circle",
                                           "a red circle to the right of a blue square"]
    texts, pos, rows, cols = batch_texts(caps, 1, np.random.default_rng(0), perpendicular_negatives=True)
    assert rows.tolist() == [0, 2] and cols[0].equal(cols[1])
    assert [texts[j] for j in cols[0]] == [caps[0], "a blue square to the left of a red circle",
                                           "a red circle to the right of a blue square",
                                           "a red circle above a blue square", "a red circle below a blue square"]
    assert pos[0, cols[0, 1:]].sum() == 0  # every false relation is a negative
    logits = torch.zeros(3, len(texts))
    logits[rows, cols[:, 0]] = 5.0  # true caption ahead of its swaps
    assert relation_loss(logits, rows, cols) < relation_loss(-logits, rows, cols)


def test_missing_weights_name_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_clip"):
        clip(tmp_path)


def test_recipe_options_train_end_to_end(tmp_path):
    from steer.zoo.shapes.train_clip import ClipTrainConfig, train

    logs: list[str] = []
    cfg = ClipTrainConfig(out=str(tmp_path), steps=2, pool=96, batch_size=16, relation_weight=0.5,
                          canonical_positives=True, perpendicular_negatives=True)
    model, tokenizer = train(cfg, log=logs.append)
    losses = [float(m.split("loss")[1].split()[0]) for m in logs if "loss" in m]
    assert losses and all(np.isfinite(losses)) and (tmp_path / "model.safetensors").exists()
    assert clip(tmp_path).model.config.projection_dim == model.config.projection_dim


def test_fine_tuning_starts_from_the_init_weights(tmp_path):
    """``init`` loads a saved CLIP (the reward CLIP is fine-tuned from the text-encoder CLIP): at
    learning rate 0 the weights come out unchanged, while a fresh model starts elsewhere."""
    import torch

    from steer.zoo.shapes.train_clip import ClipTrainConfig, train

    base, _ = train(ClipTrainConfig(out=str(tmp_path / "base"), steps=1, pool=48, batch_size=16), log=lambda m: None)
    tuned, _ = train(ClipTrainConfig(out=str(tmp_path / "tuned"), steps=2, pool=48, batch_size=16, lr=0.0,
                                     init=str(tmp_path / "base"), seed=1), log=lambda m: None)
    fresh, _ = train(ClipTrainConfig(out=str(tmp_path / "fresh"), steps=2, pool=48, batch_size=16, lr=0.0, seed=1),
                     log=lambda m: None)
    for name, p in base.state_dict().items():
        assert torch.equal(p, tuned.state_dict()[name]), name
    assert not torch.equal(base.text_projection.weight, fresh.text_projection.weight)
