"""FLUX.2 adapter on tiny random-init ``Flux2Pipeline`` / ``Flux2KleinPipeline`` (real diffusers / transformers
classes).

Faithfulness: steer's deterministic chain (flow Euler ODE, noise_level=0) from the same x_T reproduces the
pipeline's own ``pipe(...)`` — latents and decoded images — for the guidance-distilled dev pipeline, klein
with and without classifier-free guidance, and the step-distilled klein.
"""
import pytest
import torch

import steer
from steer import chain
from steer.budget import Trace
from steer.errors import SteerError
from steer.pipelines import from_pipe
from steer.pipelines.flux2 import Flux2Process
from tests.fixtures.tiny import flux2
from tests.rewards_for_tests import brightness

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red circle above a blue square", "two small green triangles"]
STEPS = 3
TOL = 1e-4
SIZE = dict(height=32, width=32)
TEXT = dict(max_sequence_length=64)  # FLUX.2's system message + the prompt fit; the rest is padding
# name -> (fixture variant, guidance_scale for pipe(...) and the process; None: the pipeline's default)
CASES = {
    "dev": ("dev", 4.0),
    "dev_guidance_1": ("dev", 1.0),
    "klein_cfg": ("klein", 4.0),
    "klein_no_cfg": ("klein", 1.0),
    "klein_distilled": ("klein_distilled", None),
}
_PIPES = {}


def tiny(variant):
    if variant not in _PIPES:
        pipe = flux2.build_pipeline(variant)
        pipe.set_progress_bar_config(disable=True)
        _PIPES[variant] = pipe
    return _PIPES[variant]


def process(variant, **kw):
    return from_pipe(tiny(variant), **{"num_inference_steps": STEPS, **SIZE, **TEXT, **kw})


@pytest.mark.parametrize("name", list(CASES))
def test_chain_reproduces_the_pipeline(name):
    variant, g = CASES[name]
    p = process(variant, guidance_scale=g)
    assert isinstance(p, Flux2Process) and p.do_classifier_free_guidance == (name == "klein_cfg")
    x = p.init_noise(len(PROMPTS), torch.Generator().manual_seed(0))  # (B, 4C, h, w): the pipeline's latents=
    trace = Trace(num_prompts=len(PROMPTS))
    with torch.no_grad():
        latents = chain.run(p, x, p.prepare(PROMPTS), noise_level=0, trace=trace)
        images = p.decode(latents)
    call = {} if g is None else {"guidance_scale": g}
    ref = {kind: tiny(variant)(prompt=PROMPTS, latents=x, num_inference_steps=STEPS, output_type=kind,
                               **SIZE, **TEXT, **call).images for kind in ("latent", "pt")}
    # output_type="latent": dev returns the packed sequence, klein the de-normalized, unpatchified VAE latent
    mine = p.vae_latents(latents) if p.klein else latents.flatten(2).transpose(1, 2)
    diff_latents = (mine - ref["latent"]).abs().max().item()
    diff_images = (images - ref["pt"]).abs().max().item()
    print(f"flux2 {name}: max |Δ| latents {diff_latents:.2e}, images {diff_images:.2e}")
    assert diff_latents <= TOL and diff_images <= TOL
    assert (latents - x).abs().mean() > 1e-2  # the chain moved: the comparison is not vacuous
    assert p.latent_shape == (16, 4, 4) and images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert trace.nfe == len(PROMPTS) * STEPS  # a CFG pair counts once


@pytest.mark.parametrize("variant,low,high", [("dev", 1.0, 5.0), ("klein", 1.0, 4.0)])
def test_guidance_reaches_the_model(variant, low, high):
    x = process(variant).init_noise(1, torch.Generator().manual_seed(1))
    outs = []
    for g in (low, high):
        p = process(variant, guidance_scale=g)
        with torch.no_grad():
            outs.append(p.predict(x, 0, p.prepare(PROMPTS[:1])).output)
    assert (outs[0] - outs[1]).abs().max() > 1e-4  # dev: the guidance embedding; klein: CFG on/off


def test_batch_size_chunks_and_particles_match_one_call():
    whole = process("klein", guidance_scale=4.0)
    chunked = process("klein", guidance_scale=4.0, batch_size=1)
    cond = whole.prepare(PROMPTS).repeat(2)  # 2 particles per prompt, prompt-major
    x = whole.init_noise(4, torch.Generator().manual_seed(2))
    trace = Trace(num_prompts=2)
    with torch.no_grad():
        a = whole.predict(x, 1, cond).output
        b = chunked.predict(x, 1, cond, trace=trace).output
    print(f"flux2 chunked vs one call: max |Δ| {(a - b).abs().max().item():.2e}")
    assert torch.allclose(a, b, atol=1e-5) and trace.nfe == 4


def test_decode_is_differentiable():
    p = process("dev")
    x0 = torch.randn(1, *p.latent_shape, requires_grad=True)
    images = p.decode(x0)
    images.mean().backward()
    assert images.shape == (1, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert x0.grad is not None and x0.grad.abs().sum() > 0


@pytest.mark.parametrize("variant,method,options", [("dev", "best_of_n", {"n": 2}), ("dev", "fk", {"particles": 2}),
                                                    ("klein", "fk", {"particles": 2})])
def test_generate_runs_end_to_end(variant, method, options):
    out = steer.generate(tiny(variant), PROMPTS, method=method, reward=brightness, steps=2, seed=0, **SIZE, **options)
    assert out.images.shape == (2, 3, 32, 32) and out.rewards.shape == (2,)
    assert torch.isfinite(out.rewards).all() and 0 <= out.images.min() and out.images.max() <= 1
    assert out.trace.nfe == 2 * 2 * 2  # 2 prompts x 2 chains x 2 steps


def test_options_name_the_fix():
    assert process("dev").guidance_scale == 4.0 and process("klein").guidance_scale == 4.0  # the pipelines' defaults
    assert process("dev").text_encoder_out_layers == (10, 20, 30)
    assert process("klein").text_encoder_out_layers == (9, 18, 27) and process("klein").negative_prompt == ""
    with pytest.raises(ValueError, match="guidance-distilled"):
        process("dev", negative_prompt="blurry")
    with pytest.raises(SteerError, match="step-distilled"):
        process("klein_distilled", guidance_scale=4.0)
    with pytest.raises(ValueError, match="multiple of 8"):
        process("dev", height=36)
    with pytest.raises(ValueError, match="init_noise"):
        process("klein").decode(torch.randn(1, 16, 8))
