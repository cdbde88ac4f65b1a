"""Qwen-Image adapter on a tiny random-init ``QwenImagePipeline`` (real diffusers / transformers classes).

Faithfulness: steer's deterministic chain (flow Euler ODE, noise_level=0) from the same x_T reproduces
the pipeline's own ``pipe(...)`` — latents and decoded images — with and without true CFG.
"""
import pytest
import torch

import steer
from steer import chain
from steer.budget import Trace
from steer.errors import SteerError
from steer.pipelines import from_pipe
from steer.pipelines.qwenimage import QwenImageProcess
from tests.fixtures.tiny import qwenimage
from tests.rewards_for_tests import brightness

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red circle above a blue square", "two small green triangles"]  # different token lengths
STEPS = 3
TOL = 1e-4
SIZE = dict(height=32, width=32)
# name -> options shared by pipe(...) and the process
CASES = {
    "true_cfg": dict(true_cfg_scale=4.0, negative_prompt=" "),
    "true_cfg_negative_text": dict(true_cfg_scale=2.5, negative_prompt="blurry dark image"),
    "no_cfg": dict(true_cfg_scale=4.0),  # no negative prompt: the pipeline does not guide either
}
_PIPE = []


def tiny():
    if not _PIPE:
        pipe = qwenimage.build_pipeline()
        pipe.set_progress_bar_config(disable=True)
        _PIPE.append(pipe)
    return _PIPE[0]


def process(**kw):
    return from_pipe(tiny(), **{"num_inference_steps": STEPS, **SIZE, **kw})


@pytest.mark.parametrize("name", list(CASES))
def test_chain_reproduces_the_pipeline(name):
    p = process(**CASES[name])
    assert isinstance(p, QwenImageProcess) and p.do_classifier_free_guidance == (name != "no_cfg")
    x = p.init_noise(len(PROMPTS), torch.Generator().manual_seed(0))  # packed (B, seq, 4z)
    trace = Trace(num_prompts=len(PROMPTS))
    with torch.no_grad():
        latents = chain.run(p, x, p.prepare(PROMPTS), noise_level=0, trace=trace)
        images = p.decode(latents)
    ref = {kind: tiny()(PROMPTS, latents=x, num_inference_steps=STEPS, output_type=kind, **SIZE, **CASES[name]).images
           for kind in ("latent", "pt")}
    diff_latents = (latents - ref["latent"]).abs().max().item()
    diff_images = (images - ref["pt"]).abs().max().item()
    print(f"qwenimage {name}: max |Δ| latents {diff_latents:.2e}, images {diff_images:.2e}")
    assert diff_latents <= TOL and diff_images <= TOL
    assert (latents - x).abs().mean() > 1e-2  # the chain moved: the comparison is not vacuous
    assert p.latent_shape == (16, 16) and images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert trace.nfe == len(PROMPTS) * STEPS  # a CFG pair counts once


def test_true_cfg_reaches_the_model_and_keeps_the_conditional_norm():
    x = process().init_noise(1, torch.Generator().manual_seed(1))
    outs = {}
    for scale, negative in [(1.0, None), (2.0, " "), (6.0, " ")]:
        p = process(true_cfg_scale=scale, negative_prompt=negative)
        with torch.no_grad():
            outs[scale] = p.predict(x, 0, p.prepare(PROMPTS[:1])).output  # (1, seq, 4z)
    assert (outs[1.0] - outs[6.0]).abs().max() > 1e-3 and (outs[2.0] - outs[6.0]).abs().max() > 1e-3
    # diffusers' rescaling: every token of the guided velocity has the conditional velocity's norm
    assert torch.allclose(outs[6.0].norm(dim=-1), outs[1.0].norm(dim=-1), rtol=1e-4)


def test_batch_size_chunks_and_particles_match_one_call():
    whole = process(**CASES["true_cfg"])
    chunked = process(**CASES["true_cfg"], batch_size=1)
    cond = whole.prepare(PROMPTS).repeat(2)  # 2 particles per prompt; rows padded to one text length + mask
    assert not cond.tensors["prompt_embeds_mask"].all()  # the padding path is exercised
    x = whole.init_noise(4, torch.Generator().manual_seed(2))
    trace = Trace(num_prompts=2)
    with torch.no_grad():
        a = whole.predict(x, 1, cond).output
        b = chunked.predict(x, 1, cond, trace=trace).output
    print(f"qwenimage chunked vs one call: max |Δ| {(a - b).abs().max().item():.2e}")
    assert torch.allclose(a, b, atol=1e-5) and trace.nfe == 4


def test_decode_is_differentiable():
    p = process()
    x0 = torch.randn(1, *p.latent_shape, requires_grad=True)
    images = p.decode(x0)
    images.mean().backward()
    assert images.shape == (1, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert x0.grad is not None and x0.grad.abs().sum() > 0


@pytest.mark.parametrize("method,options", [("best_of_n", {"n": 2}), ("fk", {"particles": 2})])
def test_generate_runs_end_to_end(method, options):
    out = steer.generate(tiny(), PROMPTS, method=method, reward=brightness, steps=2, negative_prompt=" ", seed=0,
                         **SIZE, **options)
    assert out.images.shape == (2, 3, 32, 32) and out.rewards.shape == (2,)
    assert torch.isfinite(out.rewards).all() and 0 <= out.images.min() and out.images.max() <= 1
    assert out.trace.nfe == 2 * 2 * 2  # 2 prompts x 2 chains x 2 steps


def test_guidance_options_name_the_fix():
    with pytest.raises(SteerError, match="true_cfg_scale"):
        process(guidance_scale=4.0)
    with pytest.raises(SteerError, match="true_cfg_scale must be"):
        process(true_cfg_scale=-1.0)
    with pytest.raises(ValueError, match="multiple of 8"):
        process(height=36)
    with pytest.raises(ValueError, match="max_sequence_length"):
        process(max_sequence_length=2048)
    p = process()
    with pytest.raises(ValueError, match="init_noise"):
        p.decode(torch.randn(1, 4, 8, 8))
