"""Every reward on tiny random-init configs of its real architecture, loaded through its real loader
from checkpoints in the original key layouts: runs, gradients reach pixels, formulas by hand."""
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from steer.rewards.preprocess import (CLIP_MEAN, CLIP_STD, center_crop, clip_preprocess, hps_preprocess,
                                      processor_preprocess, resize_short_side)

PROMPTS = ["a red circle above a blue square", "two small green triangles"]


@pytest.fixture(scope="module")
def rewards(tmp_path_factory):
    from tests.fixtures.rewards import tiny_rewards

    return tiny_rewards(tmp_path_factory.mktemp("tiny_rewards"))


@pytest.fixture()
def images():
    return torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))


def _pil_reference(img: torch.Tensor, size: int = 224) -> torch.Tensor:
    """torchvision-style Resize(size, BICUBIC) + CenterCrop(size) on a PIL image, back to [0, 1]."""
    h, w = img.shape[-2:]
    pil = Image.fromarray((img * 255).round().byte().permute(1, 2, 0).numpy())
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    pil = pil.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
    pil = pil.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("hw", [(256, 300), (300, 257), (100, 180), (64, 64), (512, 512), (224, 224)])
def test_preprocess_matches_pil_within_one_level(hw):
    g = torch.Generator().manual_seed(hw[0] * 1000 + hw[1])
    noise = torch.rand(2, 3, *hw, generator=g)
    smooth = F.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=hw, mode="bilinear")
    for img in (noise, smooth):
        img = (img * 255).round() / 255  # what a PIL image can hold
        ours = center_crop(resize_short_side(img, 224), 224)
        ref = torch.stack([_pil_reference(a) for a in img])
        assert ours.shape == ref.shape == (2, 3, 224, 224)
        assert ((ours * 255).round() - ref * 255).abs().max() <= 1.0  # within 1/255 after uint8 rounding
        assert (ours - ref).abs().mean() < 0.4 / 255  # only PIL's own rounding is left


def test_preprocess_normalizes_and_is_differentiable():
    x = torch.rand(1, 3, 300, 240, requires_grad=True)
    out = clip_preprocess(x)
    assert out.shape == (1, 3, 224, 224)
    pixels = out * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(pixels, center_crop(resize_short_side(x, 224), 224), atol=1e-5, rtol=0)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


NAMES = ["hps", "pickscore", "image_reward", "clip", "aesthetic", "aesthetic_v1", "jpeg"]


@pytest.mark.parametrize("name", NAMES)
def test_reward_runs(rewards, images, name):
    out = rewards[name](images, PROMPTS)
    assert out.shape == (2,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not torch.equal(out, rewards[name](images.flip(-1) * 0.5, PROMPTS))  # depends on the pixels


@pytest.mark.parametrize("name", [n for n in NAMES if n != "jpeg"])
def test_gradient_reaches_pixels(rewards, images, name):
    reward = rewards[name]
    assert reward.differentiable
    x = images.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(reward(x, PROMPTS).sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def _hf_text(model, tokenizer, prompts):
    enc = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return model.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask).pooler_output


def test_clip_is_100_cosine(rewards, images):
    reward = rewards["clip"]
    model, tok = reward.encoder.model, reward.encoder.tokenizer
    img = model.get_image_features(pixel_values=processor_preprocess(images)).pooler_output
    expected = 100 * F.cosine_similarity(img, _hf_text(model, tok, PROMPTS))
    torch.testing.assert_close(reward(images, PROMPTS), expected, atol=1e-4, rtol=1e-5)


def test_clip_with_open_clip_model(images):
    from steer.rewards.clip import CLIPReward
    from tests.fixtures.rewards import tiny_open_clip

    model, tok = tiny_open_clip(seed=3)
    img = model.encode_image(processor_preprocess(images), normalize=True)
    txt = model.encode_text(tok(PROMPTS), normalize=True)
    expected = 100 * (img * txt).sum(-1)
    torch.testing.assert_close(CLIPReward.from_model(model, tok)(images, PROMPTS), expected, atol=1e-4, rtol=1e-5)


def test_pickscore_is_logit_scale_exp_times_cosine(rewards, images):
    reward = rewards["pickscore"]
    model, tok = reward.encoder.model, reward.encoder.tokenizer
    assert abs(model.logit_scale.item() - 2.5) < 1e-6  # a non-trivial temperature, exp(2.5) ≈ 12.18
    img = F.normalize(model.get_image_features(pixel_values=processor_preprocess(images)).pooler_output, dim=-1)
    txt = F.normalize(_hf_text(model, tok, PROMPTS), dim=-1)
    expected = (model.logit_scale.exp() * img @ txt.T).diag()  # the reference's logits_per_image diagonal
    torch.testing.assert_close(reward(images, PROMPTS), expected, atol=1e-4, rtol=1e-5)


def test_hps_is_cosine_and_loads_state_dict_key(tmp_path, images):
    from steer.rewards.hps import HPSReward
    from tests.fixtures.rewards import TINY_OPEN_CLIP, tiny_open_clip, write_tiny_hps

    path = write_tiny_hps(tmp_path / "hps.pt", seed=5)
    reward = HPSReward.from_checkpoint(path, model_name=TINY_OPEN_CLIP)
    saved = torch.load(path, weights_only=True)["state_dict"]
    for key, value in reward.encoder.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    model, tok = tiny_open_clip(seed=5)  # same weights, built independently
    img = model.encode_image(hps_preprocess(images), normalize=True)  # letterboxed, as HPSv2
    txt = model.encode_text(tok(PROMPTS), normalize=True)
    expected = (img @ txt.T).diag()
    out = reward(images, PROMPTS)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert out.abs().max() <= 1.0


def _mlp_by_hand(state, prefix, x):
    for idx in (0, 2, 4, 6, 7):  # Linear layers; dropouts in between, no nonlinearity
        x = x @ state[f"{prefix}{idx}.weight"].T + state[f"{prefix}{idx}.bias"]
    return x.squeeze(-1)


def test_image_reward_strict_original_keys_and_normalization(tmp_path, images):
    from steer.rewards.image_reward import MEAN, STD, ImageReward
    from tests.fixtures.rewards import tiny_bert_tokenizer, write_tiny_image_reward

    path, vision, text = write_tiny_image_reward(tmp_path / "ImageReward.pt", seed=7)
    tokenizer = tiny_bert_tokenizer()
    reward = ImageReward.from_checkpoint(path, tokenizer, vision, text)
    orig = torch.load(path, weights_only=True)
    model = reward.model
    assert torch.equal(model.vision.embeddings.class_embedding, orig["blip.visual_encoder.cls_token"])
    assert torch.equal(model.vision.encoder.layers[1].self_attn.projection.weight,
                       orig["blip.visual_encoder.blocks.1.attn.proj.weight"])
    assert torch.equal(model.text.encoder.layer[0].crossattention.self.key.weight,
                       orig["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"])
    # by hand: [CLS] state of the cross-attending text encoder -> MLP -> (x - mean) / std
    enc = tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert enc.input_ids.shape == (2, 35) and (enc.input_ids[:, 0] == tokenizer.cls_token_id).all()
    image_embeds = model.vision(pixel_values=clip_preprocess(images)).last_hidden_state
    cls = model.text(input_ids=enc.input_ids, attention_mask=enc.attention_mask, encoder_hidden_states=image_embeds,
                     encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long),
                     is_decoder=False).last_hidden_state[:, 0]
    expected = (_mlp_by_hand(orig, "mlp.layers.", cls) - 0.16717362830052426) / 1.0333394966054072
    assert (MEAN, STD) == (0.16717362830052426, 1.0333394966054072)
    torch.testing.assert_close(reward(images, PROMPTS), expected, atol=1e-5, rtol=1e-5)


def test_image_reward_rejects_unknown_checkpoint_keys(tmp_path):
    from steer.rewards.image_reward import ImageReward
    from tests.fixtures.rewards import tiny_bert_tokenizer, write_tiny_image_reward

    path, vision, text = write_tiny_image_reward(tmp_path / "ImageReward.pt")
    state = torch.load(path, weights_only=True)
    state["blip.itm_head.weight"] = torch.zeros(2, 2)
    torch.save(state, path)
    with pytest.raises(KeyError, match="blip.itm_head.weight"):
        ImageReward.from_checkpoint(path, tiny_bert_tokenizer(), vision, text)


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_aesthetic_head_on_normalized_embedding(rewards, images, tmp_path, version):
    reward = rewards["aesthetic" if version == "v2" else "aesthetic_v1"]
    clip = reward.encoder.model
    feats = clip.get_image_features(pixel_values=clip_preprocess(images)).pooler_output
    emb = feats / feats.norm(dim=-1, keepdim=True)
    state = reward.head.state_dict()
    if version == "v2":
        expected = _mlp_by_hand(state, "layers.", emb)
    else:
        expected = (emb @ state["weight"].T + state["bias"]).squeeze(-1)
    torch.testing.assert_close(reward(images, PROMPTS), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(reward(images, PROMPTS), reward(images, ["anything", "else"]))  # prompt-free


def test_aesthetic_default_head_is_768_1024_128_64_16_1():
    from steer.rewards.aesthetic import make_head

    linears = [m for m in make_head("v2").modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(768, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    assert sorted(make_head("v2").state_dict()) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7)
                                                          for p in ("weight", "bias"))
    assert isinstance(make_head("v1"), torch.nn.Linear) and make_head("v1").in_features == 768
    with pytest.raises(ValueError, match="'v2'"):
        make_head("v3")


def test_jpeg_is_minus_kilobytes_at_quality_95(rewards, images):
    reward = rewards["jpeg"]
    assert not reward.differentiable
    smooth = torch.full((1, 3, 64, 80), 0.5)
    x = torch.cat([images[:1], smooth])
    expected = []
    for img in x:
        buf = io.BytesIO()
        arr = (img * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(buf, format="JPEG", quality=95)
        expected.append(-len(buf.getvalue()) / 1000)
    out = reward(x, PROMPTS)
    torch.testing.assert_close(out, torch.tensor(expected))
    assert out[1] > out[0]  # a flat image compresses better than noise


def test_model_nan_raises_naming_reward(rewards, images):
    bad = images.clone()
    bad[1] = float("nan")
    with pytest.raises(FloatingPointError, match="'clip'.*two small green triangles"):
        rewards["clip"](bad, PROMPTS)


def test_dtype_follows_model_output_float32(images):
    from steer.rewards.clip import CLIPReward
    from tests.fixtures.rewards import tiny_transformers_clip

    reward = CLIPReward.from_model(*tiny_transformers_clip(seed=2))
    ref = reward(images, PROMPTS)
    reward.to(dtype=torch.float64)
    out = reward(images, PROMPTS)
    assert reward.dtype == torch.float64 and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-4)
