"""The inverse DDIM kernel (DDIM inversion) pinned to diffusers' ``DDIMInverseScheduler.step``, its
inversion noise checked against its formula, and inversion then deterministic sampling reconstructing
the latents on a tiny SD pipeline."""
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from steer import chain, kernels, kernels_inverse
from steer.pipelines.ddim_schedule import ddim_schedule
from tests.test_finetune import tiny_process

S = 10
SHAPE = (2, 4, 8, 8)
CONFIG = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, clip_sample=False)


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_inverse_step_matches_ddim_inverse_scheduler(prediction_type, set_alpha_to_one):
    forward = DDIMScheduler(prediction_type=prediction_type, set_alpha_to_one=set_alpha_to_one, **CONFIG)
    schedule = ddim_schedule(forward.config, S)
    inverse = DDIMInverseScheduler.from_config(forward.config)
    inverse.set_timesteps(S)
    # the inverse grid is the forward one reversed: inverse step k lands on chain level i = S - 1 - k
    assert torch.equal(inverse.timesteps.flip(0), schedule.timesteps)
    g = torch.Generator().manual_seed(0)
    for k, t in enumerate(inverse.timesteps):
        i = S - 1 - k
        x, out = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
        ref = inverse.step(out, t, x).prev_sample
        step = kernels_inverse.inverse_transition(schedule, i, x, out)
        assert step.deterministic
        torch.testing.assert_close(step.mean, ref, rtol=0, atol=2e-6)


def test_inversion_noise_is_the_ddpm_std_between_the_two_levels():
    schedule = ddim_schedule(DDIMScheduler(**CONFIG).config, S)
    a = schedule.alphas_cumprod
    x, out = torch.randn(SHAPE), torch.randn(SHAPE)
    i = 3
    step = kernels_inverse.inverse_transition(schedule, i, x, out, noise_level=0.1)
    # InPO's added noise: η·sqrt(_get_variance) of the forward DDPM step between the levels
    expected = 0.1 * ((1 - a[i + 1]) / (1 - a[i]) * (1 - a[i] / a[i + 1])) ** 0.5
    torch.testing.assert_close(step.std, expected.float())
    forward_std = kernels.ddim(x, kernels.to_prediction(schedule, i, x, out), a[i], a[i + 1], eta=1.0).std
    torch.testing.assert_close(step.std, 0.1 * forward_std)  # the same variance DDIM(η = 1) uses forward
    assert torch.equal(step.mean, kernels_inverse.inverse_transition(schedule, i, x, out).mean)
    with pytest.raises(ValueError, match="noise level"):
        kernels_inverse.inverse_transition(schedule, i, x, out, noise_level=-1)


def invert(process, x0, cond, end=0):
    """DDIM inversion along the chain: x_S = x0 back to level ``end``, the model evaluated at each target step."""
    x = x0
    with torch.no_grad():
        for i in range(process.num_steps - 1, end - 1, -1):
            x = kernels_inverse.inverse_transition(process.schedule, i, x, process.denoise(x, i, cond)).mean
    return x


def _round_trip(process, x0, cond, end):
    with torch.no_grad():
        back = chain.run(process, invert(process, x0, cond, end=end), cond, start=end, noise_level=0.0)
    return float((back - x0).norm() / x0.norm())


def test_partial_inversion_on_a_tiny_sd_pipeline_reconstructs_the_latents():
    # any latents (as a dataset image's), inverted half-way on the random tiny SD UNet and sampled back: the
    # relative error shrinks with the steps (measured 5.2% at S = 10, 1.9% at S = 40). On the briefly trained
    # grey world (tests/fixtures/grey.py) half-way gives 15.9% at S = 25, 8.6% at 100, 4.1% at 200; inverting all
    # the way to ᾱ ≈ 1e-4 is ill-conditioned there (x̂0 amplifies ε̂'s error by 1/sqrt(ᾱ): ~120% at any S).
    errors = {}
    for S in (10, 40):
        process = tiny_process(steps=S)
        cond = process.prepare(["a red circle", "a blue square"])
        x0 = torch.randn(2, *process.latent_shape, generator=torch.Generator().manual_seed(0))  # (2, C, h, w)
        errors[S] = _round_trip(process, x0, cond, end=S // 2)
    print(f"tiny sd reconstruction errors {errors}")
    assert errors[40] < errors[10] and errors[40] < 0.03, errors


def test_inverse_step_undoes_the_forward_step_given_the_same_model_output():
    # DDIM η = 0 with ε̂ fixed, and the flow Euler step with v̂ fixed, are inverted exactly
    from diffusers import FlowMatchEulerDiscreteScheduler

    from steer.types import Schedule

    g = torch.Generator().manual_seed(2)
    schedule = ddim_schedule(DDIMScheduler(**CONFIG).config, S)
    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
    flow.set_timesteps(S)
    flow_schedule = Schedule(kind="flow", timesteps=flow.timesteps, sigmas=flow.sigmas.float(), prediction_type="flow")
    for sched in (schedule, flow_schedule):
        for i in range(S):
            x, out = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
            nxt = kernels.transition(sched, i, x, kernels.to_prediction(sched, i, x, out)).mean
            eps = kernels.to_prediction(sched, i, x, out).eps if sched.kind == "diffusion" else out
            back = kernels_inverse.inverse_transition(sched, i, nxt, eps).mean
            torch.testing.assert_close(back, x, rtol=0, atol=5e-4 if sched.kind == "diffusion" else 1e-5)
