"""One latents -> image rule per family (``steer.pipelines.decoding``): the adapter's ``decode`` and
``steer.wrap``'s decoder give the same images from the same latents, for every tiny family wrap can
decode (an fp16 SDXL VAE with ``force_upcast`` included); wrap's method names are the catalog's."""
from __future__ import annotations

import pytest
import torch

import steer
from steer import catalog
from steer.errors import SteerError
from steer.pipelines import decoding, from_pipe
from steer.wrapping import decode as wrap_decode, methods as wrap_methods
from tests.fixtures.tiny import FAMILIES, build

# tiny families whose adapter declares its rule (the pixel DDPM has none: wrap refuses it)
DECODED = ("sd", "sd_v", "sdxl", "sd3", "flux", "pixart", "sana", "z_image", "qwenimage", "flux2", "wan", "ltx")
REFUSED = ("ddpm",)
SIZES = {"qwenimage": dict(height=32, width=64), "wan": dict(height=32, width=64, num_frames=5),
         "ltx": dict(height=32, width=64, num_frames=9), "z_image": dict(height=32, width=32),
         "sana": dict(height=32, width=32)}  # small calls (the defaults are 1024 px / 81 frames), not square


def _pair(pipe, family=None):
    process = from_pipe(pipe, num_inference_steps=2, **SIZES.get(family, {}))
    decoder = wrap_decode.decoder_for(pipe, height=process.height, width=process.width,
                                      num_frames=getattr(process, "num_frames", None))
    x0 = torch.randn((2, *process.latent_shape), generator=torch.Generator().manual_seed(0))
    return process, decoder, x0


def test_every_tiny_family_is_listed():
    assert sorted(DECODED + REFUSED) == sorted(FAMILIES)


@pytest.mark.parametrize("family", DECODED)
def test_adapter_and_wrap_decode_alike(family):
    pipe = build(family)
    assert decoding.rule_for(pipe) == type(from_pipe(pipe)).latent_rule
    process, decoder, x0 = _pair(pipe, family)
    # the pipeline's own layout, which wrap decodes: FLUX.2's loop holds tokens (B, h·w, 4C), its adapter patches
    loop = x0.flatten(2).transpose(1, 2) if family == "flux2" else x0
    with torch.no_grad():
        ours, wrapped = process.decode(x0), decoder.decode(loop)
    assert ours.shape == wrapped.shape and ours.shape[:2] == (2, 3)
    assert torch.equal(ours, wrapped)  # a video family's: the same frame grid
    if hasattr(process, "decode_video"):
        with torch.no_grad():
            frames = process.decode_video(x0)  # (2, F, 3, H, W)
        assert frames.shape == (2, process.num_frames, 3, process.height, process.width)
        assert torch.equal(decoder.decode_video(x0), frames) and torch.equal(decoder.frames(wrapped), frames)


@pytest.mark.parametrize("family", REFUSED)
def test_families_without_a_rule_are_refused(family):
    pipe = build(family)
    assert decoding.rule_for(pipe) is None
    with pytest.raises(SteerError, match="unknown latent layout"):
        wrap_decode.decoder_for(pipe)


def test_fp16_sdxl_vae_is_upcast_by_both():
    """diffusers' SDXL pipeline decodes an fp16 VAE whose config has ``force_upcast`` in float32; the
    adapter and wrap share that rule, and the VAE is fp16 again afterwards."""
    pipe = build("sdxl")
    pipe.vae.to(torch.float16)
    pipe.vae.register_to_config(force_upcast=True)
    assert decoding.needs_upcast(pipe.vae)
    process, decoder, x0 = _pair(pipe)
    with torch.no_grad():
        ours, wrapped = process.decode(x0), decoder.decode(x0)
        raw = decoder.raw(x0)
    assert raw.dtype == torch.float32  # decoded in float32
    assert pipe.vae.dtype == torch.float16
    assert torch.isfinite(ours).all() and torch.equal(ours, wrapped)


def test_wrap_methods_come_from_the_catalog():
    assert set(wrap_methods.METHODS) <= set(catalog.METHODS)
    pipe = build("sd")
    for name, cls in (("smc", wrap_methods.FK), ("best-of-n", wrap_methods.BestOfN), ("bon", wrap_methods.BestOfN),
                      ("FK", wrap_methods.FK)):
        assert isinstance(steer.wrap(pipe, method=name, reward=lambda im, p: im.mean((1, 2, 3))).particles, cls)
    with pytest.raises(SteerError, match="smc"):
        steer.wrap(pipe, method="beam", reward=lambda im, p: im.mean((1, 2, 3)))


def test_steer_wrap_is_the_function():
    import steer.wrapping  # noqa: F401 - importing the package leaves steer.wrap the function
    assert callable(steer.wrap) and steer.wrap is steer.wrapping.wrap


def test_z_image_through_wrap_is_the_pipelines_own():
    """Z-Image's adapter rule makes it steerable by wrap: best-of-N with n=1 is the plain call, bit for bit."""
    pipe = build("z_image")
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=2, guidance_scale=3.0, output_type="pt", height=32, width=32)
    plain = pipe("a red cat", generator=torch.Generator().manual_seed(3), **kw)
    out = steer.wrap(pipe, method="best_of_n", reward=lambda im, p: im[:, 0].mean((1, 2)), n=1)(
        "a red cat", generator=torch.Generator().manual_seed(3), **kw)
    assert type(out) is type(plain) and torch.equal(out.images, plain.images)
