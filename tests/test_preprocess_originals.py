"""Each reward's image transform against the original's, re-derived with the libraries the original
used: HPSv2's evaluation transform (torchvision on tensors: ``ToTensor`` then ``ResizeMaxSize``) and
transformers' ``CLIPImageProcessor`` (PickScore, CLIP score), on square and non-square images."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from steer.rewards.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess, hps_preprocess, processor_preprocess

SIZES = [(512, 512), (512, 768), (768, 512), (300, 257), (100, 180), (224, 227), (231, 224), (64, 64)]


def _image(hw, seed):
    """A PIL-representable image: smooth structure plus noise, (1, 3, H, W) in [0, 1] on the 1/255 grid."""
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=hw, mode="bilinear")
    img = (0.8 * smooth + 0.2 * torch.rand(1, 3, *hw, generator=g)).clamp(0, 1)
    return (img * 255).round() / 255


def _unnormalize(x):
    return x * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)


def _hps_original(img: torch.Tensor, size: int = 224) -> torch.Tensor:
    """HPSv2 ``ResizeMaxSize(size, fill=0)`` on the ``ToTensor`` output, as its source does it."""
    h, w = img.shape[-2:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        new = tuple(round(d * scale) for d in (h, w))
        img = TF.resize(img, list(new), TF.InterpolationMode.BICUBIC)
        ph, pw = size - new[0], size - new[1]
        img = TF.pad(img, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
    return TF.normalize(img, CLIP_MEAN, CLIP_STD)


@pytest.mark.parametrize("hw", SIZES)
def test_hps_letterbox_matches_the_original_transform(hw):
    img = _image(hw, hw[0] * 7 + hw[1])
    ours = hps_preprocess(img)
    ref = _hps_original(img[0]).unsqueeze(0)
    assert ours.shape == ref.shape == (1, 3, 224, 224)
    diff = (_unnormalize(ours) - _unnormalize(ref)).abs().max().item()
    assert diff <= 1 / 255, diff
    if hw[0] != hw[1]:  # letterboxed: black bars where the original pads
        pixels = _unnormalize(ours)
        side = 224 - round(min(hw) * 224 / max(hw))
        edge = pixels[..., :side // 2, :] if hw[0] < hw[1] else pixels[..., :, :side // 2]
        assert side < 2 or edge.abs().max() < 1e-5


def test_hps_letterbox_differs_from_a_center_crop_on_wide_images():
    """The fix the issue names: a 768 x 512 image used to be cropped; HPS sees all of it, padded."""
    img = _image((512, 768), 1)
    assert (hps_preprocess(img) - clip_preprocess(img)).abs().max() > 0.5


def _processor():
    from transformers import CLIPImageProcessor

    # the laion/CLIP-ViT-H-14 (PickScore) and openai/clip-vit-large-patch14 (CLIP score) processor settings
    return CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                              resample=3, do_center_crop=True, do_resize=True, do_rescale=True,
                              do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


@pytest.mark.parametrize("hw", SIZES)
def test_pickscore_and_clip_match_the_clip_image_processor(hw):
    img = _image(hw, hw[0] * 11 + hw[1])
    pil = Image.fromarray((img[0] * 255).round().byte().permute(1, 2, 0).numpy())
    ref = torch.from_numpy(np.asarray(_processor()(images=pil, return_tensors="np")["pixel_values"]))
    ours = processor_preprocess(img)
    assert ours.shape == ref.shape == (1, 3, 224, 224)
    err = ((_unnormalize(ours) * 255).round() - (_unnormalize(ref) * 255).round()).abs().max().item()
    assert err <= 1.0, err  # within one uint8 level (PIL's own rounding)


@pytest.mark.parametrize("hw", [(224, 227), (231, 224)])
def test_the_processor_floors_the_crop_offset(hw):
    """Margin 3 (mod 4): round((h - 224) / 2) is one pixel past the processor's floor; we floor."""
    img = _image(hw, 5)
    pil = Image.fromarray((img[0] * 255).round().byte().permute(1, 2, 0).numpy())
    ref = _unnormalize(torch.from_numpy(np.asarray(_processor()(images=pil, return_tensors="np")["pixel_values"])))
    floor_err = (_unnormalize(processor_preprocess(img)) - ref).abs().mean()
    round_err = (_unnormalize(clip_preprocess(img, crop="round")) - ref).abs().mean()
    assert floor_err < 0.5 / 255 < round_err


def test_each_reward_uses_its_original_transform():
    from steer.rewards.clip import CLIPReward
    from steer.rewards.hps import HPSReward
    from steer.rewards.pickscore import PickScoreReward

    assert HPSReward.preprocess is hps_preprocess
    assert PickScoreReward.preprocess is processor_preprocess and CLIPReward.preprocess is processor_preprocess


def test_letterbox_is_differentiable():
    x = torch.rand(1, 3, 96, 160, requires_grad=True)
    (g,) = torch.autograd.grad(hps_preprocess(x).sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
