"""The Z-Image adapter on a tiny random-init ZImagePipeline (real diffusers / transformers classes).

Faithfulness: steer's deterministic chain (flow Euler ODE, η = 0) from the same x_T reproduces the
pipeline's own ``pipe(...)`` — latents and decoded images — with guidance, without (Turbo's 0),
with dynamic shifting, with a negative prompt and with ``cfg_truncation`` / ``cfg_normalization``.
"""
import pytest
import torch

import steer
from steer import chain
from steer.budget import Trace
from steer.pipelines import adapter_for, from_pipe
from steer.pipelines.z_image import ZImageProcess
from tests.fixtures.tiny import z_image
from tests.rewards_for_tests import brightness

PROMPTS = ["a red circle above a blue square", "two small green triangles"]
STEPS = 3
TOL = 1e-4
SIZE = dict(height=32, width=32)
pytestmark = pytest.mark.usefixtures("one_thread")

# name -> (builder kwargs, guidance_scale, options shared by pipe(...) and the process)
CASES = {
    "cfg": ({}, 4.0, {}),
    "turbo_no_guidance": ({}, 0.0, {}),
    "dynamic_shift": ({"dynamic_shifting": True}, 4.0, {}),
    "negative_prompt": ({}, 4.0, {"negative_prompt": ["blurry", "dark and noisy"]}),
    "cfg_truncation_normalization": ({}, 4.0, {"cfg_truncation": 0.1, "cfg_normalization": 1.0}),
}
_PIPES = {}


def tiny(**kw):
    key = tuple(sorted(kw.items()))
    if key not in _PIPES:
        _PIPES[key] = z_image.build_pipeline(**kw)
        _PIPES[key].set_progress_bar_config(disable=True)
    return _PIPES[key]


def process_for(name, **kw):
    build, g, extra = CASES[name]
    return from_pipe(tiny(**build), **{**dict(num_inference_steps=STEPS, guidance_scale=g, **SIZE, **extra), **kw})


def pipe_call(name, x, output_type):
    build, g, extra = CASES[name]
    extra = {k: list(v) if isinstance(v, list) else v for k, v in extra.items()}  # it templates lists in place
    return tiny(**build)(list(PROMPTS), latents=x, num_inference_steps=STEPS, guidance_scale=g,
                         output_type=output_type, **SIZE, **extra).images


@pytest.mark.parametrize("name", list(CASES))
def test_chain_reproduces_the_pipeline(name):
    process = process_for(name)
    assert isinstance(process, ZImageProcess) and process.latent_shape == (16, 8, 8)
    x = process.init_noise(len(PROMPTS), torch.Generator().manual_seed(0))
    trace = Trace(num_prompts=len(PROMPTS))
    with torch.no_grad():
        latents = chain.run(process, x, process.prepare(PROMPTS), trace=trace, noise_level=0)
        images = process.decode(latents)
    diff_latents = (latents - pipe_call(name, x, "latent")).abs().max().item()
    diff_images = (images - pipe_call(name, x, "pt")).abs().max().item()
    print(f"z_image {name}: max |Δ| latents {diff_latents:.2e}, images {diff_images:.2e}")
    assert diff_latents <= TOL and diff_images <= TOL
    assert (latents - x).abs().mean() > 1e-2  # the chain moved: the comparison is not vacuous
    assert images.shape == (len(PROMPTS), 3, 32, 32) and images.dtype == torch.float32
    assert trace.nfe == len(PROMPTS) * STEPS  # a CFG pair counts once


def test_guidance_reaches_the_model():
    outs = {}
    for name, g, extra in [("cfg", 0.0, {}), ("cfg", 4.0, {}), ("cfg", 4.0, {"cfg_normalization": 1.0})]:
        p = process_for(name, guidance_scale=g, **extra)
        x = p.init_noise(1, torch.Generator().manual_seed(1))
        cond = p.prepare(PROMPTS[:1])
        assert ("negative_prompt_embeds" in cond.tensors) == (g > 0)  # Z-Image guides at any scale > 0
        with torch.no_grad():
            outs[g, bool(extra)] = p.predict(x, 0, cond).output
    assert (outs[0.0, False] - outs[4.0, False]).abs().max() > 1e-3
    assert (outs[4.0, False] - outs[4.0, True]).abs().max() > 1e-4  # the norm cap binds
    truncated = process_for("cfg_truncation_normalization")
    assert truncated.guided_steps == [True, False, False]  # (1000 − t)/1000 = 0, 1/7, 2/5 against 0.1


def test_batch_size_chunks_and_particles_match_one_call():
    whole, chunked = process_for("cfg"), process_for("cfg", batch_size=1)
    cond = whole.prepare(PROMPTS).repeat(2)  # 2 particles per prompt, prompt-major
    x = whole.init_noise(4, torch.Generator().manual_seed(2))
    trace = Trace(num_prompts=2)
    with torch.no_grad():
        a = whole.predict(x, 1, cond).output
        b = chunked.predict(x, 1, cond, trace=trace).output
    assert torch.allclose(a, b, atol=1e-5) and trace.nfe == 4


def test_prepare_leaves_the_prompts_alone_and_keeps_variable_lengths():
    p = process_for("cfg")
    prompts = list(PROMPTS)
    cond = p.prepare(prompts)
    assert prompts == PROMPTS  # ZImagePipeline.encode_prompt templates its list in place; we pass copies
    lengths = cond.tensors["prompt_mask"].sum(1).tolist()
    assert lengths[0] != lengths[1] and cond.tensors["prompt_embeds"].shape[1] == max(lengths)


def test_decode_is_differentiable():
    p = process_for("cfg")
    x0 = torch.randn(1, *p.latent_shape, requires_grad=True)
    images = p.decode(x0)
    images.mean().backward()
    assert images.shape == (1, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert x0.grad is not None and x0.grad.abs().sum() > 0


@pytest.mark.parametrize("method,knobs", [("best_of_n", {"n": 2}), ("fk", {"particles": 2})])
def test_generate_end_to_end(method, knobs):
    pipe = tiny()
    assert adapter_for(pipe) is ZImageProcess
    out = steer.generate(pipe, PROMPTS, method=method, reward=brightness, steps=2, seed=0, **SIZE, **knobs)
    assert out.images.shape == (2, 3, 32, 32) and torch.isfinite(out.rewards).all()
    assert out.trace.nfe_per_prompt == 2 * 2


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="multiple of 8"):
        process_for("cfg", height=36)
    with pytest.raises(ValueError, match="cfg_normalization must be a number >= 0"):
        process_for("cfg", cfg_normalization=-1)
    with pytest.raises(ValueError, match="init_noise"):
        process_for("cfg").decode(torch.randn(1, 4, 5, 5))
