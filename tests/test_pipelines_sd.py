"""SD 1.x/2.x, SDXL and pixel DDPM/DDIM adapters: faithful to diffusers' own pipelines, counted, checked.

Faithfulness: steer's deterministic chain (DDIM η=0, then ``decode``) from the same x_T reproduces
``pipe(..., latents=x_T, eta=0)``; measured max |Δ| is 0.0 for every family here (same float32
operations in the same order), asserted with atol 1e-5.
"""
import json

import pytest
import torch
from diffusers import DiffusionPipeline

from steer import chain
from steer.budget import Trace
from steer.pipelines import ModelNotFoundError, from_pipe, load
from steer.pipelines.ddpm import PixelProcess
from steer.pipelines.sd import StableDiffusionProcess
from steer.pipelines.sdxl import StableDiffusionXLProcess
from tests.fixtures import tiny

STEPS, GUIDANCE, ATOL = 4, 5.0, 1e-5
PROMPTS = ["a red circle above a blue square", "two green triangles"]


@pytest.fixture(scope="module")
def pipes():
    built = {"sd": tiny.build("sd"), "sd_v": tiny.build("sd_v"), "sdxl": tiny.build("sdxl"), "ddim": tiny.build("ddpm")}
    for p in built.values():
        p.set_progress_bar_config(disable=True)
    return built


def _noise(process, n, seed=0):
    return process.init_noise(n, torch.Generator().manual_seed(seed))


def _steer(process, prompts, x, **kw):
    final = chain.run(process, x, process.prepare(prompts), **kw)
    return final, process.decode(final)


@pytest.mark.parametrize("family,cls,guidance_scale", [
    ("sd", StableDiffusionProcess, GUIDANCE), ("sd_v", StableDiffusionProcess, GUIDANCE),
    ("sdxl", StableDiffusionXLProcess, GUIDANCE), ("sd", StableDiffusionProcess, 1.0),
    ("sdxl", StableDiffusionXLProcess, 1.0)])
def test_faithful_to_latent_diffusion_pipelines(pipes, family, cls, guidance_scale):
    pipe = pipes[family]
    process = from_pipe(pipe, num_inference_steps=STEPS, guidance_scale=guidance_scale)
    assert type(process) is cls
    x = _noise(process, len(PROMPTS))
    final, images = _steer(process, PROMPTS, x)
    ref_latents = {}

    def keep_latents(pipe, i, t, tensors):  # the pipeline's final latents, before its decode
        ref_latents["x"] = tensors["latents"]
        return {}

    ref_images = pipe(PROMPTS, latents=x.clone(), num_inference_steps=STEPS, guidance_scale=guidance_scale,
                      eta=0.0, output_type="pt", callback_on_step_end=keep_latents).images
    assert images.shape == ref_images.shape == (2, 3, 32, 32)
    assert (final - x).abs().mean() > 1e-2  # the chain moved: the comparison is not vacuous
    assert (final - ref_latents["x"]).abs().max() <= ATOL
    assert (images - ref_images).abs().max() <= ATOL


def test_faithful_with_negative_prompt(pipes):
    pipe = pipes["sd"]
    process = from_pipe(pipe, num_inference_steps=STEPS, guidance_scale=GUIDANCE, negative_prompt="blurry")
    x = _noise(process, 2)
    _, images = _steer(process, PROMPTS, x)
    ref = pipe(PROMPTS, latents=x.clone(), num_inference_steps=STEPS, guidance_scale=GUIDANCE,
               negative_prompt=["blurry"] * 2, output_type="pt").images
    assert (images - ref).abs().max() <= ATOL


def test_faithful_to_pixel_ddim_pipeline(pipes):
    pipe = pipes["ddim"]
    process = from_pipe(pipe, num_inference_steps=STEPS)
    assert isinstance(process, PixelProcess) and process.schedule.clip_sample == 1.0
    x = _noise(process, 3, seed=5)
    _, images = _steer(process, ["", "", ""], x)
    ref = pipe(batch_size=3, generator=torch.Generator().manual_seed(5), num_inference_steps=STEPS,
               eta=0.0, output_type="pt").images  # draws x_T from the same generator
    assert (images - ref).abs().max() <= ATOL


def test_ddim_eta1_reproduces_ddpm_pipeline():
    """DDIM η=1 is DDPM's ancestral sampler (Song et al. 2021); with unclipped x̂0 the chains coincide,
    noise draws included (same generator, same order)."""
    pipe = tiny.build("ddpm", pipeline="ddpm", clip_sample=False)
    pipe.set_progress_bar_config(disable=True)
    process = from_pipe(pipe, num_inference_steps=STEPS)
    gen = torch.Generator().manual_seed(3)
    x = process.init_noise(2, gen)
    final = chain.run(process, x, process.prepare(["", ""]), noise_level=1.0, generator=gen)
    ref = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=STEPS,
               output_type="pt").images
    assert (process.decode(final) - ref).abs().max() <= 1e-4


def test_nfe_counts_latents_not_guidance_pairs(pipes):
    process = from_pipe(pipes["sd"], num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    cond = process.prepare(PROMPTS).repeat(3)  # 2 prompts x 3 particles
    trace = Trace(num_prompts=2)
    chain.run(process, _noise(process, 6), cond, trace=trace)
    assert trace.nfe == 6 * STEPS and trace.nfe_per_prompt == 3 * STEPS


def test_prompts_are_independent_rows(pipes):
    process = from_pipe(pipes["sdxl"], num_inference_steps=STEPS)
    x = _noise(process, 2)
    together = chain.run(process, x, process.prepare(PROMPTS))
    alone = torch.cat([chain.run(process, x[k:k + 1], process.prepare(PROMPTS[k])) for k in range(2)])
    assert not torch.allclose(together[0], together[1])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)  # batched GEMMs differ in the last bits


@pytest.mark.parametrize("family", ["sd", "ddim"])
def test_batch_size_chunking_gives_identical_outputs(pipes, family):
    full = from_pipe(pipes[family], num_inference_steps=STEPS)
    chunked = from_pipe(pipes[family], num_inference_steps=STEPS, batch_size=2)
    prompts = ["a", "b", "c"]
    x = _noise(full, 3)
    trace = Trace(num_prompts=3)
    torch.testing.assert_close(chain.run(chunked, x, chunked.prepare(prompts), trace=trace),
                               chain.run(full, x, full.prepare(prompts)), rtol=1e-4, atol=1e-4)
    assert trace.nfe == 3 * STEPS


def test_decode_is_differentiable(pipes):
    process = from_pipe(pipes["sdxl"], num_inference_steps=STEPS)
    x0 = (0.3 * _noise(process, 1)).requires_grad_(True)
    process.decode(x0).mean().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0


def test_bad_input_errors(pipes):
    process = from_pipe(pipes["sd"], num_inference_steps=STEPS)
    cond = process.prepare(PROMPTS)
    with pytest.raises(ValueError, match=r"latents of shape \(2, 4, 16, 16\).*init_noise"):
        process.predict(torch.zeros(2, 4, 16, 16), 0, cond)
    with pytest.raises(ValueError, match="on meta.*process.device"):
        process.predict(torch.zeros(2, 4, 8, 8, device="meta"), 0, cond)
    with pytest.raises(ValueError, match="floating point"):
        process.predict(torch.zeros(2, 4, 8, 8, dtype=torch.long), 0, cond)
    with pytest.raises(ValueError, match="conditioning rows"):
        process.predict(torch.zeros(3, 4, 8, 8), 0, cond)
    with pytest.raises(ValueError, match=r"latents of shape \(1, 4, 8\)"):
        process.decode(torch.zeros(1, 4, 8))
    with pytest.raises(ValueError, match="height=30 must be a positive multiple of 4"):
        from_pipe(pipes["sd"], height=30)
    with pytest.raises(ValueError, match="negative_prompt must be a string or a list of 2"):
        from_pipe(pipes["sd"], negative_prompt=["x"] * 3).prepare(PROMPTS)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        process.prepare([])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        from_pipe(pipes["sd"], batch_size=0)
    with pytest.raises(ValueError, match="unconditional.*guidance"):
        from_pipe(pipes["ddim"], guidance_scale=7.5)


def test_custom_sizes_and_guidance_free_cond(pipes):
    process = from_pipe(pipes["sd"], num_inference_steps=2, guidance_scale=1.0, height=48, width=32)
    assert process.latent_shape == (4, 12, 8)
    cond = process.prepare("one prompt")
    assert set(cond.tensors) == {"prompt_embeds"}
    assert process.decode(chain.run(process, _noise(process, 1), cond)).shape == (1, 3, 48, 32)


class _UnsupportedPipeline(DiffusionPipeline):
    """A real (empty) diffusers pipeline class that steer has no adapter for."""


def test_unsupported_pipeline_class_names_families():
    with pytest.raises(TypeError, match=r"no adapter for _UnsupportedPipeline.*StableDiffusionPipeline.*Process"):
        from_pipe(_UnsupportedPipeline())


# ---- load ---------------------------------------------------------------------------------
def test_load_saved_pipeline_generates_like_the_original(pipes, tmp_path):
    pipes["sd_v"].save_pretrained(tmp_path / "tiny-sd")
    process = load(tmp_path / "tiny-sd", dtype="float32", num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    original = from_pipe(pipes["sd_v"], num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    assert isinstance(process, StableDiffusionProcess) and process.schedule.prediction_type == "v_prediction"
    x = _noise(process, 2)
    torch.testing.assert_close(_steer(process, PROMPTS, x)[1], _steer(original, PROMPTS, x)[1], rtol=0, atol=1e-6)


def test_load_missing_model_says_what_to_do(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"hf download .*local directory") as err:
        load(tmp_path / "nowhere" / "model")
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"not in the local Hugging Face cache.*hf download"):
        load("steer-tests/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        load(tmp_path / "empty")


def test_load_unsupported_class_names_families(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(TypeError, match=r"KandinskyPipeline.*Supported families: .*StableDiffusionXLPipeline"):
        load(tmp_path)
    with pytest.raises(ValueError, match="dtype must be"):
        load(tmp_path, dtype="float8")


def test_denoiser_runs_in_pipeline_dtype_chain_in_float32():
    pipe = tiny.build("sd").to(torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    process = from_pipe(pipe, num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    assert process.dtype == torch.bfloat16 and process.device == torch.device("cpu")
    x = _noise(process, 2)
    final, images = _steer(process, PROMPTS, x)
    assert final.dtype == images.dtype == torch.float32
    ref = pipe(PROMPTS, latents=x.to(torch.bfloat16), num_inference_steps=STEPS, guidance_scale=GUIDANCE,
               output_type="pt").images  # diffusers also rounds the chain to bf16 at every step
    assert (images - ref.float()).abs().max() < 0.05
