"""``steer.wrap``: particle methods inside a pipeline's own ``__call__`` (tiny real-class pipelines)."""
from __future__ import annotations

import pytest
import torch

import steer
from steer.errors import SteerError
from steer.scoring import RewardError
from tests.fixtures.tiny import build

STEPS, K = 4, 3
PROMPTS = ["a red cat", "a blue dog"]


def red(images, prompts):
    """Redness: mean red minus mean blue, per image (B,)."""
    return images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _build(family):
    from tests.fixtures.tiny import auraflow, cogview4, lumina2

    pipe = {"lumina2": lumina2, "auraflow": auraflow, "cogview4": cogview4}[family].build_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# family -> (call size, the pipeline's own output class)
UNADAPTED = {"lumina2": (64, "ImagePipelineOutput"), "auraflow": (32, "ImagePipelineOutput"),
             "cogview4": (32, "CogView4PipelineOutput")}


@pytest.fixture(scope="module", params=sorted(UNADAPTED))
def unadapted(request):
    return request.param, _build(request.param)


@pytest.fixture(scope="module")
def sd():
    pipe = build("sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_families_without_adapter(unadapted):
    """best-of-N and FK run inside the pipeline's own call (the user's own callback sees all P·K particles
    at every step), return its own output type with one image per prompt, and restore its scheduler."""
    family, pipe = unadapted
    size, out_cls = UNADAPTED[family]
    from steer.pipelines import FAMILIES, adapter_for

    assert type(pipe).__name__ not in FAMILIES
    with pytest.raises(TypeError, match="no adapter"):
        adapter_for(pipe)
    for method, options in (("best_of_n", dict(n=K)), ("fk", dict(particles=K, lam=1e6))):
        seen = []

        def user_callback(p, i, t, kw):
            seen.append((i, kw["latents"].shape[0]))
            return kw

        out = steer.wrap(pipe, method=method, reward=red, **options)(
            PROMPTS, num_inference_steps=STEPS, guidance_scale=3.0, generator=gen(), output_type="pt",
            height=size, width=size, callback_on_step_end=user_callback)
        assert type(out).__name__ == out_cls and out.images.shape == (2, 3, 32, 32)
        assert seen == [(i, 2 * K) for i in range(STEPS)]
        assert out.steer_trace.nfe == 2 * K * STEPS and out.steer_trace.reward_calls >= 2 * K
        assert torch.equal(out.rewards, out.candidate_rewards.max(1).values)
        assert torch.allclose(red(out.images, PROMPTS), out.rewards, atol=1e-6)  # the kept image is the scored one
        assert "step" not in vars(pipe.scheduler)
        if method == "fk":  # λ = 1e6 puts all weight on one particle: every survivor descends from it
            scored = [s for s in out.steer_trace.steps if "lineage" in s]
            assert scored and all(s["resampled"] == [True, True] for s in scored[:1])
            assert max(scored[0]["ess_before"]) < 1.01
            for row in scored[0]["lineage"]:
                assert len(set(row)) == 1
            assert out.log_weights.shape == (2, K) and "ess" in out.steer_trace.steps[-1]


def test_sd_matches_steer_generate(sd):
    """SD with its DDIMScheduler: wrap's FK (and best-of-N) give exactly steer.generate's images, latents
    and rewards at the same seed: same initial noise, DDIM η = 1 kernel, resampling draws."""
    for method, options, wrap_options in (("fk", dict(particles=K, ess_threshold=1.0), {}),
                                          ("best_of_n", dict(n=K), {})):
        ref = steer.generate(sd, PROMPTS, method=method, reward=red, seed=7, steps=STEPS, guidance_scale=3.0,
                             **options)
        out = steer.wrap(sd, method=method, reward=red, **options, **wrap_options)(
            PROMPTS, num_inference_steps=STEPS, guidance_scale=3.0, generator=gen(7), output_type="pt")
        assert type(out).__name__ == "StableDiffusionPipelineOutput"
        assert torch.equal(out.steer_latents, ref.latents) and torch.equal(out.images, ref.images)
        assert torch.equal(out.rewards, ref.rewards) and torch.equal(out.candidate_rewards, ref.candidate_rewards)
        assert out.steer_trace.nfe == ref.trace.nfe
        assert [s.get("ess") for s in out.steer_trace.steps] == [s.get("ess") for s in ref.trace.steps]


def test_image_conditioned_img2img(sd):
    """StableDiffusionImg2ImgPipeline (an image-conditioned pipeline) through wrap: FK over the strength-
    truncated chain, PIL output as the pipeline's own."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**sd.components)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32, generator=gen(1))
    out = steer.wrap(pipe, method="fk", reward=red, particles=K)(
        "a red cat", image=image, strength=0.5, num_inference_steps=2 * STEPS, guidance_scale=3.0, generator=gen())
    assert type(out).__name__ == "StableDiffusionPipelineOutput" and len(out.images) == 1
    assert out.images[0].size == (32, 32) and out.steer_trace.nfe == K * STEPS  # strength 0.5 of 8 steps
    assert sum("lineage" in s for s in out.steer_trace.steps) >= 1


def _pag():
    """A pipeline with a callback but no decoding rule: Stable Diffusion with perturbed-attention guidance."""
    from diffusers import StableDiffusionPAGPipeline

    return StableDiffusionPAGPipeline(**build("sd").components, pag_applied_layers=["mid"])


def test_cannot_steer_one_line(sd):
    from diffusers import EulerDiscreteScheduler

    cases = [(lambda: steer.wrap(build("ddpm"), method="fk", reward=red), "callback_on_step_end"),
             (lambda: steer.wrap(_pag(), method="best_of_n", reward=red), "unknown latent layout"),
             (lambda: steer.wrap(sd, method="beam", reward=red), "does not run inside a pipeline call")]
    euler = type(sd)(**{**sd.components, "scheduler": EulerDiscreteScheduler.from_config(sd.scheduler.config)})
    cases.append((lambda: steer.wrap(euler, method="fk", reward=red), "DDIMScheduler.from_config"))
    for make, words in cases:
        with pytest.raises(SteerError, match=words) as e:
            make()
        assert "\n" not in str(e.value)
    steered = steer.wrap(sd, method="fk", reward=red, particles=2)
    for kw, words in ((dict(num_images_per_prompt=2), "particle count"), (dict(generator=[gen(), gen()]), "one torch")):
        with pytest.raises(SteerError, match=words):
            steered("a cat", num_inference_steps=2, **kw)
    out = steer.wrap(euler, method="best_of_n", reward=red, n=2)("a cat", num_inference_steps=2, output_type="pt")
    assert out.images.shape == (1, 3, 32, 32)  # best-of-N runs with any scheduler (the pipeline's own)


def test_scheduler_restored_on_error(sd):
    def broken(images, prompts):
        raise RuntimeError("reward server down")

    before = sd.scheduler.step
    with pytest.raises(RewardError, match="reward server down"):
        steer.wrap(sd, method="fk", reward=broken, particles=2)("a cat", num_inference_steps=STEPS, generator=gen())
    assert "step" not in vars(sd.scheduler) and sd.scheduler.step == before


@pytest.mark.parametrize("family", ["sd3", "sdxl", "flux", *sorted(UNADAPTED)])
def test_decode_rule_is_the_pipelines_own(family):
    """best-of-N with n=1 on the pipeline's own scheduler is the plain call: the family's decode rule
    (``steer.pipelines.decoding``: scaled, scaled + shift, SDXL, FLUX's packed latents) gives the pipeline's
    own images bit for bit."""
    pipe = _build(family) if family in UNADAPTED else build(family)
    pipe.set_progress_bar_config(disable=True)
    size = UNADAPTED.get(family, (32,))[0]
    kw = dict(num_inference_steps=2, guidance_scale=3.0, output_type="pt", height=size, width=size)
    if family == "flux":
        kw["max_sequence_length"] = 64
    plain = pipe("a red cat", generator=gen(3), **kw)
    out = steer.wrap(pipe, method="best_of_n", reward=red, n=1)("a red cat", generator=gen(3), **kw)
    assert type(out) is type(plain) and torch.equal(out.images, plain.images)
