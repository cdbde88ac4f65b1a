"""Wan 2.x text-to-video adapter on tiny random-init pipelines (real diffusers/transformers classes).

Faithfulness: steer's deterministic chain (flow Euler ODE) from the same x_T reproduces
``WanPipeline(...)`` — latents and decoded frames — for Wan 2.1, Wan 2.2's two experts and its
per-token timesteps.
"""
import pytest
import torch

import steer
from steer import chain
from steer.budget import Trace
from steer.pipelines import from_pipe
from steer.pipelines.video import grid_shape
from tests.fixtures.tiny import wan
from tests.rewards_for_tests import brightness

PROMPTS = ["a red circle above a blue square", "two small green triangles"]
STEPS = 3
TOL = 1e-4
SIZE = dict(height=32, width=32, num_frames=5, max_sequence_length=64)

# name -> (builder kwargs, options shared by pipe(...) and the process)
CASES = {
    "wan21": ({}, {"guidance_scale": 5.0}),
    "wan22_two_experts": ({"two_stage": True}, {"guidance_scale": 5.0, "guidance_scale_2": 2.0}),
    "wan22_expand_timesteps": ({"expand_timesteps": True}, {"guidance_scale": 4.0}),
    "wan21_no_cfg": ({}, {"guidance_scale": 1.0}),
}
_PIPES = {}


def tiny(**kw):
    key = tuple(sorted(kw.items()))
    if key not in _PIPES:
        _PIPES[key] = wan.build_pipeline(**kw)
        _PIPES[key].set_progress_bar_config(disable=True)
    return _PIPES[key]


def process_for(name="wan21", **kw):
    build, options = CASES[name]
    return from_pipe(tiny(**build), **{**dict(num_inference_steps=STEPS, **SIZE, **options), **kw})


@pytest.mark.parametrize("name", list(CASES))
def test_chain_reproduces_the_pipeline(name, one_thread):
    build, options = CASES[name]
    process = process_for(name)
    x = process.init_noise(len(PROMPTS), torch.Generator().manual_seed(0))  # (B, 16, 2, 4, 4)
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
    assert frames.shape == (2, 5, 3, 32, 32) and frames.dtype == torch.float32
    assert grid.shape == (2, 3, 2 * 32, 3 * 32) and grid_shape(5) == (2, 3)  # 5 frames in a 2x3 grid
    assert torch.equal(process.frames(grid), frames)
    assert trace.nfe == len(PROMPTS) * STEPS  # a CFG pair counts once


def test_guidance_reaches_the_model(one_thread):
    x = process_for().init_noise(1, torch.Generator().manual_seed(1))
    outs = {}
    for g in (1.0, 5.0):
        p = process_for(guidance_scale=g)
        with torch.no_grad():
            outs[g] = p.predict(x, 0, p.prepare(PROMPTS[:1])).output
    assert (outs[1.0] - outs[5.0]).abs().max() > 1e-3  # CFG on/off
    # Wan 2.2: the low-noise expert (last step here) uses guidance_scale_2
    low = {}
    for g2 in (2.0, 6.0):
        p = process_for("wan22_two_experts", guidance_scale_2=g2)
        assert p.low_noise == [False, False, True]
        with torch.no_grad():
            cond = p.prepare(PROMPTS[:1])
            low[g2] = p.predict(x, 2, cond).output
            high = p.predict(x, 0, cond).output
        assert torch.equal(high, process_for("wan22_two_experts", guidance_scale_2=1.5).predict(x, 0, cond).output)
    assert (low[2.0] - low[6.0]).abs().max() > 1e-3


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
    first = process_for(frame_layout=0)
    with torch.no_grad():
        assert torch.equal(first.decode(x0), p.decode_video(x0)[:, 0])  # (B, 3, H, W): the first frame alone


def test_unipc_pipeline_uses_its_flow_sigmas(one_thread):
    pipe = tiny(scheduler="unipc")
    before = pipe.scheduler.timesteps
    p = from_pipe(pipe, num_inference_steps=STEPS, guidance_scale=5.0, **SIZE)
    ref = type(pipe.scheduler).from_config(pipe.scheduler.config)
    ref.set_timesteps(STEPS)
    assert torch.equal(p.schedule.sigmas, ref.sigmas) and torch.equal(p.schedule.timesteps, ref.timesteps)
    assert pipe.scheduler.timesteps is before  # read off a copy
    x = p.init_noise(1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        frames = p.decode_video(chain.run(p, x, p.prepare(PROMPTS[:1])))
    assert torch.isfinite(frames).all() and frames.shape == (1, 5, 3, 32, 32)


@pytest.mark.parametrize("method,options", [("best_of_n", {"n": 2}), ("fk", {"particles": 2})])
def test_generate_end_to_end(method, options, one_thread):
    out = steer.generate(tiny(), PROMPTS[:1], method=method, reward=brightness, steps=2, height=32, width=32,
                         seed=0, **options)  # default num_frames=81: a 9x9 grid of 32x32 frames
    assert out.images.shape == (1, 3, 9 * 32, 9 * 32) and out.rewards.shape == (1,)
    assert torch.isfinite(out.rewards).all() and out.trace.nfe > 0


def test_bad_options_name_the_fix():
    with pytest.raises(ValueError, match="num_frames=5"):
        process_for(num_frames=6)
    with pytest.raises(ValueError, match="multiple of 16"):
        process_for(height=24)
    with pytest.raises(ValueError, match="guidance_scale_2"):
        process_for(guidance_scale_2=2.0)
    with pytest.raises(ValueError, match="frame_layout"):
        process_for(frame_layout=5)
    p = process_for()
    with pytest.raises(ValueError, match="init_noise"):
        p.decode(torch.randn(1, 16, 4, 4))
