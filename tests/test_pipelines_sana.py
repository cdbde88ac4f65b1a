"""The Sana adapter on a tiny random-init SanaPipeline (real diffusers / transformers classes).

Faithfulness: steer's deterministic chain (flow Euler ODE, η = 0) from the same x_T reproduces the
pipeline's own ``pipe(...)`` — latents and decoded images — with FlowMatchEuler, and with the
DPM-Solver the released checkpoints ship wherever diffusers' DPM-Solver++ takes first-order steps.
"""
import pytest
import torch

import steer
from steer import chain
from steer.budget import Trace
from steer.pipelines import adapter_for, from_pipe
from steer.pipelines.sana import SanaProcess
from tests.fixtures.tiny import sana
from tests.rewards_for_tests import brightness

PROMPTS = ["a red circle above a blue square", "two small green triangles"]
TOL = 1e-4
SIZE = dict(height=32, width=32)
pytestmark = pytest.mark.usefixtures("one_thread")

# name -> (builder kwargs, steps, guidance_scale, options shared by pipe(...) and the process)
CASES = {
    "flow_euler": ({}, 3, 4.5, {}),
    "flow_euler_no_cfg": ({}, 3, 1.0, {}),
    "no_instruction_negative": ({}, 3, 4.5, {"complex_human_instruction": None, "negative_prompt": "blurry"}),
    "dpm_order1": ({"scheduler": "dpm", "solver_order": 1}, 3, 4.5, {}),
    "dpm_released_2_steps": ({"scheduler": "dpm"}, 2, 4.5, {}),  # order 2, but both steps first order
}
_PIPES = {}


def tiny(**kw):
    key = tuple(sorted(kw.items()))
    if key not in _PIPES:
        _PIPES[key] = sana.build_pipeline(**kw)
        _PIPES[key].set_progress_bar_config(disable=True)
    return _PIPES[key]


def process_for(name, **kw):
    build, steps, g, extra = CASES[name]
    return from_pipe(tiny(**build), **{**dict(num_inference_steps=steps, guidance_scale=g, **SIZE, **extra), **kw})


def pipe_call(name, x, output_type, **build_override):
    build, steps, g, extra = CASES[name]
    return tiny(**{**build, **build_override})(
        list(PROMPTS), latents=x, num_inference_steps=steps, guidance_scale=g, output_type=output_type,
        use_resolution_binning=False, **SIZE, **extra).images


@pytest.mark.parametrize("name", list(CASES))
def test_chain_reproduces_the_pipeline(name):
    process = process_for(name)
    assert isinstance(process, SanaProcess) and process.latent_shape == (4, 8, 8)
    x = process.init_noise(len(PROMPTS), torch.Generator().manual_seed(0))
    trace = Trace(num_prompts=len(PROMPTS))
    with torch.no_grad():
        latents = chain.run(process, x, process.prepare(PROMPTS), trace=trace, noise_level=0)
        images = process.decode(latents)
    diff_latents = (latents - pipe_call(name, x, "latent")).abs().max().item()
    diff_images = (images - pipe_call(name, x, "pt")).abs().max().item()
    print(f"sana {name}: max |Δ| latents {diff_latents:.2e}, images {diff_images:.2e}")
    assert diff_latents <= TOL and diff_images <= TOL
    assert (latents - x).abs().mean() > 1e-2  # the chain moved: the comparison is not vacuous
    assert images.shape == (len(PROMPTS), 3, 32, 32) and images.dtype == torch.float32
    assert trace.nfe == len(PROMPTS) * CASES[name][1]  # a CFG pair counts once


def test_released_dpm_solver_is_solved_at_first_order_on_its_grid():
    """Order 2 at 3 steps: the chain equals DPM-Solver++(1) on the same σ grid (the documented deviation)."""
    process = from_pipe(tiny(scheduler="dpm"), num_inference_steps=3, guidance_scale=4.5, **SIZE)
    dpm = tiny(scheduler="dpm").scheduler
    dpm_copy = type(dpm).from_config(dpm.config)
    dpm_copy.set_timesteps(3)
    assert torch.equal(process.schedule.sigmas, dpm_copy.sigmas) and torch.equal(process.schedule.timesteps,
                                                                                  dpm_copy.timesteps.float())
    x = process.init_noise(len(PROMPTS), torch.Generator().manual_seed(0))
    with torch.no_grad():
        latents = chain.run(process, x, process.prepare(PROMPTS))
    order1 = pipe_call("dpm_order1", x, "latent")  # same weights (same seed), solver_order=1
    order2 = pipe_call("dpm_order1", x, "latent", solver_order=2)
    assert (latents - order1).abs().max() <= TOL
    assert (latents - order2).abs().max() > 1e-3  # the second-order multistep update differs


def test_guidance_reaches_the_model():
    outs = {}
    for g in (1.0, 4.5):
        p = process_for("flow_euler", guidance_scale=g)
        x = p.init_noise(1, torch.Generator().manual_seed(1))
        cond = p.prepare(PROMPTS[:1])
        assert ("negative_prompt_embeds" in cond.tensors) == (g > 1)
        with torch.no_grad():
            outs[g] = p.predict(x, 0, cond).output
    assert (outs[1.0] - outs[4.5]).abs().max() > 1e-3


def test_batch_size_chunks_and_particles_match_one_call():
    whole, chunked = process_for("flow_euler"), process_for("flow_euler", batch_size=1)
    cond = whole.prepare(PROMPTS).repeat(2)  # 2 particles per prompt, prompt-major
    x = whole.init_noise(4, torch.Generator().manual_seed(2))
    trace = Trace(num_prompts=2)
    with torch.no_grad():
        a = whole.predict(x, 1, cond).output
        b = chunked.predict(x, 1, cond, trace=trace).output
    assert torch.allclose(a, b, atol=1e-5) and trace.nfe == 4


def test_decode_is_differentiable():
    p = process_for("flow_euler")
    x0 = torch.randn(1, *p.latent_shape, requires_grad=True)
    images = p.decode(x0)
    images.mean().backward()
    assert images.shape == (1, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert x0.grad is not None and x0.grad.abs().sum() > 0


@pytest.mark.parametrize("method,knobs", [("best_of_n", {"n": 2}), ("fk", {"particles": 2})])
def test_generate_end_to_end(method, knobs):
    pipe = tiny()
    assert adapter_for(pipe) is SanaProcess
    out = steer.generate(pipe, PROMPTS, method=method, reward=brightness, steps=2, seed=0, **SIZE, **knobs)
    assert out.images.shape == (2, 3, 32, 32) and torch.isfinite(out.rewards).all()
    assert out.trace.nfe_per_prompt == 2 * 2


def test_resolution_binning_and_errors():
    from diffusers import DPMSolverMultistepScheduler
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_512_BIN

    p = from_pipe(tiny(sample_size=16), height=256, width=320, num_inference_steps=2)  # 512-px bins
    assert (p.height, p.width) == tuple(map(int, ASPECT_RATIO_512_BIN["0.82"]))  # the bin nearest to 0.8
    assert (p.orig_height, p.orig_width) == (256, 320)
    with torch.no_grad():
        assert p.decode(torch.zeros(1, *p.latent_shape)).shape == (1, 3, 256, 320)  # resized and cropped back
    with pytest.raises(ValueError, match="use_resolution_binning=False"):
        from_pipe(tiny(), use_resolution_binning=True)
    with pytest.raises(ValueError, match="multiple of 32"):
        process_for("flow_euler", height=48)
    pipe = sana.build_pipeline()
    pipe.scheduler = DPMSolverMultistepScheduler()  # epsilon prediction: not a flow model's scheduler
    with pytest.raises(ValueError, match="flow_prediction"):
        from_pipe(pipe, **SIZE)
    with pytest.raises(ValueError, match="init_noise"):
        process_for("flow_euler").decode(torch.randn(1, 4, 5, 5))
