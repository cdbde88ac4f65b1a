"""``steer.wrap`` on the families whose latents need their adapter's rule: Qwen-Image (packed image latents),
FLUX.2 (dev and klein) and the video pipelines Wan 2.x and LTX-Video (tiny random-init real-class pipelines).

The wrapped call gives ``steer.generate``'s particles, resampling and samples at the same seed (LTX-Video bit
for bit; Wan and Qwen-Image to float rounding: their pipelines make two transformer calls, cond and uncond,
where steer makes one batched call), videos come back as the pipeline's own ``frames`` (one video per prompt),
image rewards score the frame grid ``steer.generate`` scores and video rewards the frames.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import steer
from steer.errors import SteerError
from steer.pipelines import from_pipe
from steer.rewards.video import FrameReward
from tests.fixtures.tiny import build

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, K = 3, 3
PROMPTS = ["a red cat", "a blue dog"]
# family -> (the call's size and options, shared by pipe(...) and the adapter; the pipeline's output class)
CALLS = {
    "wan": (dict(height=32, width=32, num_frames=5, guidance_scale=5.0, max_sequence_length=64), "WanPipelineOutput"),
    "ltx": (dict(height=32, width=64, num_frames=9, guidance_scale=3.0, max_sequence_length=64), "LTXPipelineOutput"),
    "qwenimage": (dict(height=32, width=32, true_cfg_scale=4.0, negative_prompt=" "), "QwenImagePipelineOutput"),
}
EXACT = {"wan": False, "ltx": True, "qwenimage": False}  # bit for bit, or to float rounding (1e-5)
_PIPES: dict = {}


def red(images, prompts):
    """Redness: mean red minus mean blue, per image (B,)."""
    return images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny(family, **kw):
    key = (family, *sorted(kw.items()))
    if key not in _PIPES:
        _PIPES[key] = build(family, **kw)
        _PIPES[key].set_progress_bar_config(disable=True)
    return _PIPES[key]


def _samples(out):
    return out.frames if hasattr(out, "frames") else out.images


def _alike(a, b, exact):
    if exact:
        assert torch.equal(a, b)
    else:
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()


@pytest.mark.parametrize("family", sorted(CALLS))
def test_matches_steer_generate(family):
    """FK (resampling at every scoring step, λ large enough that ancestors die) and best-of-N: the wrapped
    pipeline call gives steer.generate's particles, lineage, rewards and kept samples at the same seed."""
    call, out_cls = CALLS[family]
    pipe = tiny(family)
    process = from_pipe(pipe, num_inference_steps=STEPS, **call)
    for method, options in (("fk", dict(particles=K, lam=3e3, ess_threshold=1.0)), ("best_of_n", dict(n=K))):
        ref = steer.generate(process, PROMPTS, method=method, reward=red, seed=7, **options)
        out = steer.wrap(pipe, method=method, reward=red, **options)(
            PROMPTS, num_inference_steps=STEPS, generator=gen(7), output_type="pt", **call)
        assert type(out).__name__ == out_cls
        exact = EXACT[family]
        _alike(out.steer_latents, ref.latents, exact)
        _alike(out.candidate_rewards, ref.candidate_rewards, exact)
        _alike(out.rewards, ref.rewards, exact)
        kept = process.frames(ref.images) if hasattr(process, "frames") else ref.images  # (P, F, 3, H, W) for video
        assert _samples(out).shape == kept.shape
        _alike(_samples(out), kept, exact)
        assert out.steer_trace.nfe == ref.trace.nfe == len(PROMPTS) * K * STEPS
        assert len(out.steer_trace.steps) == len(ref.trace.steps)
        rtol = 0 if exact else 1e-3  # λ = 3000 magnifies rounding in the x̂0 rewards into the ESS
        for ours, theirs in zip(out.steer_trace.steps, ref.trace.steps):  # ESS, resampling, best x̂0 rewards, λ
            assert ours.get("resampled") == theirs.get("resampled")
            for key in ("ess", "ess_before", "best_reward", "lam"):
                assert (key in ours) == (key in theirs)
                assert np.allclose(ours.get(key, 0), theirs.get(key, 0), rtol=rtol, atol=0), (key, ours, theirs)
        if method == "fk":  # not vacuous: resampling replaced particles (wrap records each particle's root)
            lineage = [s["lineage"] for s in out.steer_trace.steps if "lineage" in s]
            assert lineage and any(len(set(row)) < K for rows in lineage for row in rows)


@pytest.mark.parametrize("family", sorted(CALLS))
def test_plain_call_is_the_pipelines_own(family):
    """best-of-N with n=1 on the pipeline's own scheduler is the plain call: the family's decoding rule and the
    pipeline's own post-processing give its images / videos bit for bit, in its default output type too."""
    call, _ = CALLS[family]
    pipe = tiny(family)
    for output_type in ("pt", None):
        kw = dict(call, num_inference_steps=2, **({} if output_type is None else {"output_type": output_type}))
        plain = pipe("a red cat", generator=gen(3), **kw)
        out = steer.wrap(pipe, method="best_of_n", reward=red, n=1)("a red cat", generator=gen(3), **kw)
        assert type(out) is type(plain)
        got, want = _samples(out), _samples(plain)
        if isinstance(want, torch.Tensor):
            assert torch.equal(got, want)
        elif isinstance(want, np.ndarray):  # Wan / LTX default output_type "np": (1, F, H, W, 3)
            assert got.shape == want.shape and np.array_equal(got, want)
        else:  # Qwen-Image's default "pil"
            assert len(got) == len(want) == 1 and np.array_equal(np.asarray(got[0]), np.asarray(want[0]))


def test_video_rewards_read_the_frames():
    """A per-frame reward (space "video") reads the frames, an image reward the frame grid, as under
    steer.generate; the kept video is the one scored."""
    call, _ = CALLS["wan"]
    pipe = tiny("wan")
    process = from_pipe(pipe, num_inference_steps=STEPS, **call)
    worst_frame = FrameReward(red, reduce="min")
    ref = steer.generate(process, PROMPTS, method="fk", reward=worst_frame, seed=5, particles=K, lam=3e3)
    out = steer.wrap(pipe, method="fk", reward=worst_frame, particles=K, lam=3e3)(
        PROMPTS, num_inference_steps=STEPS, generator=gen(5), output_type="pt", **call)
    assert out.frames.shape == (2, 5, 3, 32, 32)
    _alike(out.candidate_rewards, ref.candidate_rewards, EXACT["wan"])
    _alike(out.steer_latents, ref.latents, EXACT["wan"])
    assert torch.allclose(worst_frame(out.frames, PROMPTS), out.rewards, atol=1e-6)
    spec = "shapes-temporal"  # a video reward by its spec: temporal consistency on the shipped shapes CLIP
    ref = steer.generate(process, PROMPTS, method="best_of_n", reward=spec, seed=5, n=2)
    out = steer.wrap(pipe, method="best_of_n", reward=spec, n=2)(
        PROMPTS, num_inference_steps=STEPS, generator=gen(5), output_type="pt", **call)
    _alike(out.candidate_rewards, ref.candidate_rewards, EXACT["wan"])
    grid = steer.wrap(pipe, method="best_of_n", reward=red, n=2)(
        PROMPTS, num_inference_steps=STEPS, generator=gen(5), output_type="pt", **call)
    assert torch.allclose(red(process.layout(grid.frames), PROMPTS), grid.rewards, atol=1e-6)  # 2x3 frame grids
    assert not torch.allclose(red(grid.frames[:, 0], PROMPTS), grid.rewards, atol=1e-4)  # not the first frame alone


def test_ltx_timestep_conditioned_decoder():
    """LTX-Video 0.9.1+: the decoder gets the call's ``decode_timestep``; noise blended in at decode
    (``decode_noise_scale``, by default ``decode_timestep``) is refused in one line, as the adapter refuses it."""
    pipe = tiny("ltx", timestep_conditioning=True)
    call = dict(CALLS["ltx"][0], num_inference_steps=2, output_type="pt", decode_timestep=0.05)
    plain = pipe("a red cat", generator=gen(3), decode_noise_scale=0.0, **call)
    steered = steer.wrap(pipe, method="best_of_n", reward=red, n=1)
    out = steered("a red cat", generator=gen(3), decode_noise_scale=0.0, **call)
    assert torch.equal(out.frames, plain.frames)
    other = steered("a red cat", generator=gen(3), decode_noise_scale=0.0, **{**call, "decode_timestep": 0.5})
    assert not torch.equal(other.frames, plain.frames)  # the timestep reaches the decoder
    with pytest.raises(SteerError, match="decode_noise_scale=0") as e:
        steered("a red cat", generator=gen(3), **call)
    assert "\n" not in str(e.value)


def test_video_refusals_are_one_line():
    steered = steer.wrap(tiny("wan"), method="fk", reward=red, particles=2)
    cases = [(lambda: steered("a cat", num_videos_per_prompt=2, num_inference_steps=2, **CALLS["wan"][0]),
              "num_videos_per_prompt is the method's particle count"),
             (lambda: steer.wrap(tiny("ltx"), method="fk", reward=red, decode=lambda x: x), "decode= is for image")]
    for make, words in cases:
        with pytest.raises(SteerError, match=words) as e:
            make()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("variant", ["dev", "klein"])
def test_flux2(variant):
    """FLUX.2 (its call's first argument is ``image=``; the prompt goes by keyword): the plain call's images and
    latents (klein returns the VAE latent) bit for bit, best-of-N steer.generate's; FK resamples and keeps the
    scored image. (FK's kernel noise is drawn in the pipeline's token layout, steer.generate's in patches: the
    same distribution, other draws.)"""
    pipe = tiny("flux2", variant=variant)
    kw = dict(height=32, width=32, guidance_scale=4.0, max_sequence_length=64)
    for output_type in ("pt", "latent"):
        plain = pipe(prompt="a red cat", generator=gen(3), num_inference_steps=2, output_type=output_type, **kw)
        out = steer.wrap(pipe, method="best_of_n", reward=red, n=1)(
            "a red cat", generator=gen(3), num_inference_steps=2, output_type=output_type, **kw)
        assert type(out) is type(plain) and torch.equal(out.images, plain.images)
    process = from_pipe(pipe, num_inference_steps=STEPS, **kw)
    ref = steer.generate(process, PROMPTS, method="best_of_n", reward=red, seed=7, n=K)
    out = steer.wrap(pipe, method="best_of_n", reward=red, n=K)(
        PROMPTS, num_inference_steps=STEPS, generator=gen(7), output_type="pt", **kw)
    assert torch.equal(out.images, ref.images) and torch.equal(out.candidate_rewards, ref.candidate_rewards)
    fk = steer.wrap(pipe, method="fk", reward=red, particles=K, lam=3e3, ess_threshold=1.0)(
        PROMPTS, num_inference_steps=STEPS, generator=gen(7), output_type="pt", **kw)
    lineage = [s["lineage"] for s in fk.steer_trace.steps if "lineage" in s]
    assert lineage and any(len(set(row)) < K for rows in lineage for row in rows)
    assert torch.allclose(red(fk.images, PROMPTS), fk.rewards, atol=1e-6)


@pytest.mark.parametrize("build_kw", [dict(scheduler="unipc"), dict(two_stage=True), dict(expand_timesteps=True)],
                         ids=["unipc", "wan22_two_experts", "wan22_expand_timesteps"])
def test_wan_variants_match_steer_generate(build_kw):
    """Wan as released (UniPC with flow sigmas: FK's kernel is the Euler SDE on its σ grid, as steer.generate's
    adapter integrates it), Wan 2.2's two experts and its per-token timesteps: wrap's FK is steer.generate's."""
    pipe = tiny("wan", **build_kw)
    call = dict(CALLS["wan"][0], **({"guidance_scale_2": 2.0} if build_kw.get("two_stage") else {}))
    options = dict(particles=K, lam=3e3, ess_threshold=1.0)
    ref = steer.generate(from_pipe(pipe, num_inference_steps=STEPS, **call), PROMPTS, method="fk", reward=red, seed=7,
                         **options)
    out = steer.wrap(pipe, method="fk", reward=red, **options)(
        PROMPTS, num_inference_steps=STEPS, generator=gen(7), output_type="pt", **call)
    _alike(out.steer_latents, ref.latents, exact=False)
    _alike(out.candidate_rewards, ref.candidate_rewards, exact=False)
    assert out.frames.shape == (2, 5, 3, 32, 32)
