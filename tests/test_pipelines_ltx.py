"""LTX-Video adapter on tiny random-init pipelines (real diffusers/transformers classes).

Faithfulness: steer's deterministic chain (flow Euler ODE) from the same packed x_T reproduces
``LTXPipeline(...)`` — latents and decoded frames — with plain CFG, guidance rescale, and a
timestep-conditioned decoder (LTX-Video 0.9.1+).
"""
import pytest
import torch

import steer
from steer import chain
from steer.budget import Trace
from steer.pipelines import from_pipe
from tests.fixtures.tiny import ltx
from tests.rewards_for_tests import brightness

PROMPTS = ["a red circle above a blue square", "two small green triangles"]
STEPS = 3
TOL = 1e-4
SIZE = dict(height=32, width=32, num_frames=9, max_sequence_length=64)

# name -> (builder kwargs, options shared by pipe(...) and the process)
CASES = {
    "ltx": ({}, {"guidance_scale": 3.0}),
    "ltx_guidance_rescale": ({}, {"guidance_scale": 3.0, "guidance_rescale": 0.7}),
    "ltx_091_decode_timestep": ({"timestep_conditioning": True},
                                {"guidance_scale": 3.0, "decode_timestep": 0.05, "decode_noise_scale": 0.0}),
    "ltx_no_cfg": ({}, {"guidance_scale": 1.0, "frame_rate": 12}),
}
_PIPES = {}


def tiny(**kw):
    key = tuple(sorted(kw.items()))
    if key not in _PIPES:
        _PIPES[key] = ltx.build_pipeline(**kw)
        _PIPES[key].set_progress_bar_config(disable=True)
    return _PIPES[key]


def process_for(name="ltx", **kw):
    build, options = CASES[name]
    return from_pipe(tiny(**build), **{**dict(num_inference_steps=STEPS, **SIZE, **options), **kw})


@pytest.mark.parametrize("name", list(CASES))
def test_chain_reproduces_the_pipeline(name, one_thread):
    build, options = CASES[name]
    process = process_for(name)
    x = process.init_noise(len(PROMPTS), torch.Generator().manual_seed(0))  # packed (B, 3·8·8, 8)
    trace = Trace(num_prompts=len(PROMPTS))
    with torch.no_grad():
        latents = chain.run(process, x, process.prepare(PROMPTS), trace=trace)
        frames = process.decode_video(latents)
        grid = process.decode(latents)
    call = dict(latents=x, num_inference_steps=STEPS, **SIZE, **options)
    ref_latents = tiny(**build)(PROMPTS, output_type="latent", **call).frames
    ref_frames = tiny(**build)(PROMPTS, output_type="pt", **call).frames  # (B, F, 3, H, W)
    diff_latents = (latents - ref_latents).abs().max().item()
    diff_frames = (frames - ref_frames).abs().max().item()
    print(f"{name}: max |Δ| latents {diff_latents:.2e}, frames {diff_frames:.2e}")
    assert diff_latents <= TOL and diff_frames <= TOL
    assert (latents - x).abs().mean() > 1e-2  # the chain moved: the comparison is not vacuous
    assert process.latent_shape == (3 * 8 * 8, 8)  # (f·h·w tokens, channels)
    assert process.schedule.sigmas[-2] == pytest.approx(0.1)  # the scheduler's shift_terminal
    assert frames.shape == (2, 9, 3, 32, 32) and grid.shape == (2, 3, 3 * 32, 3 * 32)
    assert torch.equal(process.frames(grid), frames)
    assert trace.nfe == len(PROMPTS) * STEPS  # a CFG pair counts once


def test_guidance_and_decode_timestep_reach_the_models(one_thread):
    x = process_for().init_noise(1, torch.Generator().manual_seed(1))
    outs = {}
    for g in (1.0, 5.0):
        p = process_for(guidance_scale=g)
        with torch.no_grad():
            outs[g] = p.predict(x, 0, p.prepare(PROMPTS[:1])).output
    assert (outs[1.0] - outs[5.0]).abs().max() > 1e-3  # CFG on/off
    with torch.no_grad():
        a, b = (process_for("ltx_091_decode_timestep", decode_timestep=t).decode_video(x) for t in (0.0, 0.05))
    assert (a - b).abs().max() > 1e-4  # the timestep-conditioned decoder sees decode_timestep


def test_batch_size_chunks_and_particles_match_one_call(one_thread):
    whole, chunked = process_for(), process_for(batch_size=1)
    cond = whole.prepare(PROMPTS).repeat(2)  # 2 particles per prompt, prompt-major
    x = whole.init_noise(4, torch.Generator().manual_seed(2))
    trace = Trace(num_prompts=2)
    with torch.no_grad():
        a = whole.predict(x, 1, cond).output
        b = chunked.predict(x, 1, cond, trace=trace).output
    assert torch.allclose(a, b, atol=1e-5)
    assert trace.nfe == 4


def test_decode_is_differentiable(one_thread):
    p = process_for()
    x0 = torch.randn(1, *p.latent_shape, requires_grad=True)
    p.decode(x0).mean().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0
    last = process_for(frame_layout=-1)
    with torch.no_grad():
        assert torch.equal(last.decode(x0), p.decode_video(x0)[:, -1])  # (B, 3, H, W): the last frame alone


@pytest.mark.parametrize("method,options", [("best_of_n", {"n": 2}), ("fk", {"particles": 2})])
def test_generate_end_to_end(method, options, one_thread):
    out = steer.generate(tiny(), PROMPTS[:1], method=method, reward=brightness, steps=2, height=32, width=32,
                         seed=0, **options)  # default num_frames=161: a 13x13 grid of 32x32 frames
    assert out.images.shape == (1, 3, 13 * 32, 13 * 32) and out.rewards.shape == (1,)
    assert torch.isfinite(out.rewards).all() and out.trace.nfe > 0


def test_bad_options_name_the_fix():
    with pytest.raises(ValueError, match="num_frames=9"):
        process_for(num_frames=10)
    with pytest.raises(ValueError, match="multiple of 32"):
        process_for(height=48)
    with pytest.raises(ValueError, match="decode_noise_scale=0"):
        process_for("ltx_091_decode_timestep", decode_noise_scale=None)  # None: diffusers' default = decode_timestep
    p = process_for()
    with pytest.raises(ValueError, match="init_noise"):
        p.decode(torch.randn(1, 8, 3, 8, 8))
