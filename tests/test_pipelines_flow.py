"""SD3, FLUX and PixArt adapters on tiny random-init pipelines (real diffusers/transformers classes).

Faithfulness: steer's deterministic chain (flow Euler ODE / DDIM η=0) from the same x_T reproduces
the pipeline's own ``pipe(...)`` — latents and decoded images.
"""
import pytest
import torch

from steer import chain
from steer.budget import Trace
from steer.pipelines import from_pipe
from tests.fixtures.tiny import flux, pixart, sd3

PROMPTS = ["a red circle above a blue square", "two small green triangles"]
STEPS = 3
TOL = 1e-5
SIZE = dict(height=32, width=32)

# name -> (builder, builder kwargs, guidance_scale, extra kwargs shared by pipe(...) and the process)
CASES = {
    "sd3": (sd3.build_pipeline, {}, 5.0, {}),
    "sd3_no_t5": (sd3.build_pipeline, {"with_t5": False}, 5.0, {}),
    "sd3_dynamic_shift": (sd3.build_pipeline, {"dynamic_shifting": True}, 5.0, {}),
    "flux_dev": (flux.build_pipeline, {"guidance_embeds": True}, 3.5, {"max_sequence_length": 64}),
    "flux_schnell": (flux.build_pipeline, {"guidance_embeds": False}, 0.0, {"max_sequence_length": 64}),
    "pixart_alpha": (pixart.build_pipeline, {"variant": "alpha"}, 4.5, {}),
    "pixart_alpha_1024_conditions": (pixart.build_pipeline, {"variant": "alpha", "additional_conditions": True},
                                     4.5, {"use_resolution_binning": False}),
    "pixart_sigma": (pixart.build_pipeline, {"variant": "sigma"}, 4.5, {}),
}
_PIPES = {}


def tiny(name):
    if name not in _PIPES:
        build, kw, _, _ = CASES[name]
        pipe = build(**kw)
        pipe.set_progress_bar_config(disable=True)
        _PIPES[name] = pipe
    return _PIPES[name]


def process_for(name, **kw):
    _, _, g, extra = CASES[name]
    options = dict(num_inference_steps=STEPS, guidance_scale=g, **SIZE, **extra)
    return from_pipe(tiny(name), **{**options, **kw})


def pipe_call(name, x, output_type):
    _, _, g, extra = CASES[name]
    if name.startswith("pixart"):
        extra = {"use_resolution_binning": False, **extra}
    return tiny(name)(PROMPTS, latents=x, num_inference_steps=STEPS, guidance_scale=g, output_type=output_type,
                      **SIZE, **extra).images


@pytest.mark.parametrize("name", list(CASES))
def test_chain_reproduces_the_pipeline(name):
    process = process_for(name)
    x = process.init_noise(len(PROMPTS), torch.Generator().manual_seed(0))  # FLUX: packed (B, seq, 4C)
    trace = Trace(num_prompts=len(PROMPTS))
    with torch.no_grad():
        latents = chain.run(process, x, process.prepare(PROMPTS), trace=trace)
        images = process.decode(latents)
    ref_latents = pipe_call(name, x, "latent")
    ref_images = pipe_call(name, x, "pt")
    diff_latents = (latents - ref_latents).abs().max().item()
    diff_images = (images - ref_images).abs().max().item()
    print(f"{name}: max |Δ| latents {diff_latents:.2e}, images {diff_images:.2e}")
    assert diff_latents <= TOL and diff_images <= TOL
    assert (latents - x).abs().mean() > 1e-2  # the chain moved: the comparison is not vacuous
    assert images.shape == (len(PROMPTS), 3, 32, 32) and images.dtype == torch.float32
    assert trace.nfe == len(PROMPTS) * STEPS  # a CFG pair counts once


def test_guidance_reaches_the_model():
    x = process_for("sd3").init_noise(1, torch.Generator().manual_seed(1))
    outs = {}
    for name, g in [("sd3", 1.0), ("sd3", 5.0), ("flux_dev", 1.0), ("flux_dev", 5.0)]:
        p = process_for(name, guidance_scale=g)
        xn = p.init_noise(1, torch.Generator().manual_seed(1))
        with torch.no_grad():
            outs[name, g] = p.predict(xn, 0, p.prepare(PROMPTS[:1])).output
    assert (outs["sd3", 1.0] - outs["sd3", 5.0]).abs().max() > 1e-3  # CFG on/off
    assert (outs["flux_dev", 1.0] - outs["flux_dev", 5.0]).abs().max() > 1e-4  # guidance embedding
    assert x.shape[1:] == (16, 8, 8)


def test_flux_schnell_has_no_guidance_and_packed_latents():
    p = process_for("flux_schnell")
    assert p.latent_shape == (16, 64) and not p.guidance_embeds
    assert torch.equal(p.schedule.sigmas, torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]))
    dev = process_for("flux_dev")
    assert dev.schedule.sigmas[0] == 1 and dev.schedule.sigmas[-1] == 0
    assert (dev.schedule.sigmas[1:-1] > p.schedule.sigmas[1:-1]).all()  # mu shifts towards noise


@pytest.mark.parametrize("name", ["sd3", "pixart_sigma"])
def test_batch_size_chunks_and_particles_match_one_call(name):
    whole = process_for(name)
    chunked = process_for(name, batch_size=1)
    cond = whole.prepare(PROMPTS).repeat(2)  # 2 particles per prompt, prompt-major
    x = whole.init_noise(4, torch.Generator().manual_seed(2))
    trace = Trace(num_prompts=2)
    with torch.no_grad():
        a = whole.predict(x, 1, cond).output
        b = chunked.predict(x, 1, cond, trace=trace).output
    assert torch.allclose(a, b, atol=1e-5)
    assert trace.nfe == 4


def test_decode_is_differentiable():
    p = process_for("flux_dev")
    x0 = torch.randn(1, *p.latent_shape, requires_grad=True)
    p.decode(x0).mean().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0


def test_pipeline_scheduler_is_left_untouched():
    pipe = tiny("sd3_dynamic_shift")
    before = pipe.scheduler.timesteps
    process_for("sd3_dynamic_shift", num_inference_steps=7)
    assert pipe.scheduler.timesteps is before


@pytest.mark.parametrize("name", ["sd3", "flux_dev", "pixart_alpha"])
def test_wrong_latent_shape_is_a_clear_error(name):
    p = process_for(name)
    cond = p.prepare(PROMPTS[:1])
    bad = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="init_noise"):
        p.predict(bad, 0, cond)
    with pytest.raises(ValueError, match="init_noise"):
        p.decode(bad)


@pytest.mark.parametrize("name,size", [("sd3", 36), ("flux_dev", 28), ("pixart_sigma", 30)])
def test_indivisible_image_size_names_the_fix(name, size):
    with pytest.raises(ValueError, match="multiple of"):
        process_for(name, height=size, width=32)


def test_flux_rejects_negative_prompt():
    with pytest.raises(ValueError, match="guidance-distilled"):
        process_for("flux_dev", negative_prompt="blurry")


def test_pixart_resolution_binning():
    p = from_pipe(tiny("pixart_alpha_1024_conditions"), height=256, width=320, num_inference_steps=2)
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_1024_BIN

    assert (p.height, p.width) == (896, 1088) == tuple(map(int, ASPECT_RATIO_1024_BIN["0.82"]))  # nearest to 0.8
    assert (p.orig_height, p.orig_width) == (256, 320)  # decode resizes and crops back
    assert p.latent_shape == (4, 224, 272) and p.additional_conditions
    with pytest.raises(ValueError, match="use_resolution_binning=False"):
        from_pipe(tiny("pixart_alpha"), use_resolution_binning=True)
    assert from_pipe(tiny("pixart_sigma")).max_sequence_length == 300
    assert from_pipe(tiny("pixart_alpha")).max_sequence_length == 120
