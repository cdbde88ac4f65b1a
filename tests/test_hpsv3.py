"""HPSv3 on a tiny random-init Qwen2-VL (real transformers classes, real checkpoint layout), offline."""
import numpy as np
import pytest
import torch
from PIL import Image

from steer.rewards import MissingWeightsError, load
from steer.rewards.hpsv3 import PIXELS, HPSv3Reward, preprocess, smart_resize
from steer.rewards.hpsv3_prompt import INSTRUCTION, PROMPT_SUFFIX, REWARD_TOKEN, chat_text, user_text
from steer.rewards.preprocess import CLIP_STD
from tests.fixtures.hpsv3 import tiny_config_of, tiny_hpsv3_state_dict, write_tiny_hpsv3

PROMPTS = ["a red circle above a blue square", "a photo of a cat on a sofa"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_hpsv3(tmp_path_factory.mktemp("hpsv3"))


@pytest.fixture(scope="module")
def reward(checkpoint):
    return HPSv3Reward.from_checkpoint(checkpoint, config=tiny_config_of(checkpoint))


@pytest.fixture()
def images():
    return torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))


def _pil(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(512, 512), (300, 500), (1024, 768), (64, 64), (448, 448)])
def test_preprocess_matches_qwen2vl_image_processor(size):
    """Against transformers' own Qwen2-VL processor (PIL backend, as the original resizes with PIL) at
    HPSv3's min_pixels = max_pixels = 256*28*28: same grid, pixels within about one uint8 level."""
    from transformers import Qwen2VLImageProcessorPil

    image = _pil(*size)
    ref = Qwen2VLImageProcessorPil(min_pixels=PIXELS, max_pixels=PIXELS)(images=image, return_tensors="pt")
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)
    pixel_values, grid = preprocess(x)
    assert grid.tolist() == ref["image_grid_thw"].tolist()
    assert pixel_values.shape == ref["pixel_values"].shape == (int(grid.prod()), 3 * 2 * 14 * 14)
    levels = (pixel_values - ref["pixel_values"]).abs() * min(CLIP_STD) * 255  # in uint8 levels (upper bound)
    if size == (448, 448):  # no resize: only float rounding
        assert levels.max() < 1e-3
    else:  # PIL rounds to uint8 after each of its two passes; we do not
        assert levels.max() <= 1.25 and levels.mean() < 0.4


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference

    for h, w in [(512, 512), (1024, 1024), (300, 500), (1024, 768), (64, 64), (28, 600), (2000, 333), (720, 1280)]:
        ours = smart_resize(h, w, min_pixels=PIXELS, max_pixels=PIXELS)
        assert ours == reference(h, w, factor=28, min_pixels=PIXELS, max_pixels=PIXELS), (h, w)
    assert smart_resize(512, 512, min_pixels=PIXELS, max_pixels=PIXELS) == (448, 448)  # 256 merged image tokens
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 3000, min_pixels=PIXELS, max_pixels=PIXELS)


def test_prompt_is_qwen2vl_chat_template(reward):
    """Our chat string equals the tokenizer's own (Qwen2-VL) chat template rendering of the original message."""
    message = [{"role": "user", "content": [{"type": "image", "image": "x"},
                                            {"type": "text", "text": user_text(PROMPTS[0])}]}]
    rendered = reward.tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
    assert rendered == chat_text(PROMPTS[0])
    assert INSTRUCTION.endswith("Textual prompt - {text_prompt}\n\n\n") and "**Visual Quality:**  \n" in INSTRUCTION
    assert PROMPT_SUFFIX == "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
    ids = reward.tokenizer(chat_text(PROMPTS[0], 256)).input_ids
    assert ids.count(reward.reward_token_id) == 1 and ids.count(reward.model.config.image_token_id) == 256


def test_scores_a_batch(reward, images):
    assert reward.differentiable and reward.name == "hpsv3"
    scores = reward(images, PROMPTS)
    assert scores.shape == (2,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    torch.testing.assert_close(reward(images, PROMPTS), scores, rtol=0, atol=0)  # deterministic
    swapped = reward(images, PROMPTS[::-1])
    assert not torch.allclose(swapped, scores)  # depends on the caption
    out = reward.outputs(images, PROMPTS)
    assert out.shape == (2, 2)
    torch.testing.assert_close(out[:, 0], scores)  # the score is mu; out[:, 1] is log sigma
    # right padding leaves each prompt's score as if it were scored alone
    alone = torch.cat([reward(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(alone, scores, rtol=1e-4, atol=1e-5)


def test_gradients_reach_the_pixels(reward, images):
    x = images.clone().requires_grad_(True)
    reward(x, PROMPTS).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_both_key_layouts_and_pth_load_alike(checkpoint, reward, images, tmp_path):
    from safetensors.torch import save_file

    config = tiny_config_of(checkpoint)
    expected = reward(images, PROMPTS)
    new = tmp_path / "new.safetensors"
    save_file(tiny_hpsv3_state_dict(config, layout="new"), str(new))  # transformers >= 4.52 names
    pth = tmp_path / "HPSv3_7B.pth"
    torch.save({"model": tiny_hpsv3_state_dict(config)}, pth)  # the original loader's {"model": ...} form
    for path in (new, pth):
        other = HPSv3Reward.from_checkpoint(path, tokenizer=checkpoint.parent, config=config)
        torch.testing.assert_close(other(images, PROMPTS), expected)
    half = HPSv3Reward.from_checkpoint(checkpoint, config=config, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.model.rm_head[0].weight.dtype == torch.float32  # head stays fp32
    assert torch.isfinite(half(images, PROMPTS)).all()


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("rm_head.5.bias"), "1 missing (e.g. 'rm_head.5.bias')"),
    (lambda s: s.__setitem__("visual.extra.weight", torch.zeros(1)), "1 unexpected (e.g. 'backbone.visual.extra.weight')"),
    (lambda s: s.__setitem__("rm_head.5.bias", torch.zeros(3)), "has shape (3,), the model expects (2,)"),
])
def test_wrong_checkpoint_is_refused_in_one_line(checkpoint, tmp_path, edit, message):
    from safetensors.torch import save_file

    config = tiny_config_of(checkpoint)
    state = tiny_hpsv3_state_dict(config)
    edit(state)
    path = tmp_path / "HPSv3.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError) as err:
        HPSv3Reward.from_checkpoint(path, tokenizer=checkpoint.parent, config=config)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_reward_token_in_a_caption_is_refused(reward, images):
    with pytest.raises(ValueError, match=f"exactly one {REWARD_TOKEN.replace('|', '[|]')}"):
        reward(images, [PROMPTS[0], f"a cat {REWARD_TOKEN}"])


@pytest.fixture()
def empty_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    for var in ("STEER_HPSV3_PATH", "STEER_QWEN2VL_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_missing_weights_name_where_to_get_them(empty_hub, checkpoint, monkeypatch, tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        load("hpsv3")
    msg = str(err.value)
    assert "\n" not in msg and "HPSv3.safetensors not found" in msg and "huggingface.co/MizzenAI/HPSv3" in msg
    assert "STEER_HPSV3_PATH" in msg and "path=" in msg
    monkeypatch.setenv("STEER_HPSV3_PATH", str(checkpoint))  # the checkpoint alone: the tokenizer is missing
    with pytest.raises(MissingWeightsError) as err:
        load("hpsv3")
    msg = str(err.value)
    assert "\n" not in msg and "Qwen/Qwen2-VL-7B-Instruct" in msg and "STEER_QWEN2VL_PATH" in msg
    with pytest.raises(MissingWeightsError, match="holds no HPSv3.safetensors"):
        HPSv3Reward.from_checkpoint(tmp_path)


def test_registry_loads_from_env_vars(empty_hub, checkpoint, reward, images, monkeypatch):
    monkeypatch.setenv("STEER_HPSV3_PATH", str(checkpoint))
    monkeypatch.setenv("STEER_QWEN2VL_PATH", str(checkpoint.parent))
    loaded = load("hpsv3", options={"hpsv3": {"config": tiny_config_of(checkpoint)}})
    assert isinstance(loaded, HPSv3Reward)
    torch.testing.assert_close(loaded(images, PROMPTS), reward(images, PROMPTS))
