"""Kernels pinned to diffusers' schedulers, and the Flow-GRPO SDE checked against its formula."""
import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from steer import kernels
from steer.pipelines.ddim_schedule import ddim_schedule
from steer.types import Schedule

S = 10
SHAPE = (2, 4, 8, 8)


def _ddim(prediction_type="epsilon", clip_sample=False, **config):
    scheduler = DDIMScheduler(prediction_type=prediction_type, clip_sample=clip_sample, clip_sample_range=1.0,
                              beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              steps_offset=1, set_alpha_to_one=False, **config)
    schedule = ddim_schedule(scheduler.config, S)
    scheduler.set_timesteps(S)
    return scheduler, schedule


def _flow(shift=3.0):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(S)
    schedule = Schedule(kind="flow", timesteps=scheduler.timesteps, sigmas=scheduler.sigmas.float(),
                        prediction_type="flow")
    return scheduler, schedule


def _pairs(seed=0):
    g = torch.Generator().manual_seed(seed)
    for i in range(S):
        yield i, torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)  # x, model output


@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_eta0_matches_ddim_scheduler_step(prediction_type, clip_sample):
    scheduler, schedule = _ddim(prediction_type, clip_sample)
    assert torch.equal(schedule.timesteps, scheduler.timesteps)
    for i, x, out in _pairs():
        t = scheduler.timesteps[i]
        ref = scheduler.step(out, t, x, eta=0.0)
        pred = kernels.to_prediction(schedule, i, x, out)
        g = kernels.transition(schedule, i, x, pred, noise_level=0.0)
        assert g.deterministic
        torch.testing.assert_close(g.mean, ref.prev_sample, rtol=0, atol=1e-6)
        torch.testing.assert_close(pred.x0, ref.pred_original_sample, rtol=0, atol=1e-6)
        assert torch.equal(kernels.sample(g), g.mean)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_eta_positive_matches_ddim_scheduler_step_with_given_noise(prediction_type):
    eta = 0.7
    scheduler, schedule = _ddim(prediction_type)
    for i, x, out in _pairs(seed=1):
        t = scheduler.timesteps[i]
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + i))
        ref = scheduler.step(out, t, x, eta=eta, variance_noise=z).prev_sample
        g = kernels.transition(schedule, i, x, kernels.to_prediction(schedule, i, x, out), noise_level=eta)
        prev_t = t - scheduler.config.num_train_timesteps // S
        expected_std = eta * scheduler._get_variance(t, prev_t) ** 0.5
        torch.testing.assert_close(g.std, expected_std.float(), rtol=1e-6, atol=0)
        torch.testing.assert_close(kernels.sample(g, noise=z), ref, rtol=0, atol=1e-6)
        # the mean is the eta>0 step without its noise term
        torch.testing.assert_close(g.mean, ref - expected_std * z, rtol=0, atol=1e-5)


def test_ddim_schedule_final_level_follows_ddim_rule():
    scheduler, schedule = _ddim()
    assert schedule.alphas_cumprod.shape == (S + 1,)
    ac = scheduler.alphas_cumprod
    for i, t in enumerate(scheduler.timesteps[:-1]):
        assert schedule.alphas_cumprod[i + 1] == ac[t - 1000 // S]  # leading spacing: = ᾱ(t_{i+1})
    assert schedule.alphas_cumprod[-1] == scheduler.final_alpha_cumprod  # t_last - T//S < 0
    assert schedule.clip_sample is None


def test_ddim_schedule_rejects_thresholding():
    with pytest.raises(ValueError, match="thresholding"):
        ddim_schedule(DDIMScheduler(thresholding=True).config, S)


def test_flow_euler_matches_flow_match_scheduler_step_with_shift():
    scheduler, schedule = _flow(shift=3.0)
    assert not torch.allclose(schedule.sigmas, _flow(shift=1.0)[1].sigmas)  # the shift is really exercised
    for i, x, v in _pairs(seed=2):
        ref = scheduler.step(v, scheduler.timesteps[i], x).prev_sample
        g = kernels.transition(schedule, i, x, kernels.to_prediction(schedule, i, x, v), noise_level=0.0)
        torch.testing.assert_close(g.mean, ref, rtol=0, atol=1e-6)


def _sde_case(i=3, a=0.7, seed=3):
    _, schedule = _flow()
    g = torch.Generator().manual_seed(seed)
    x, v = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    pred = kernels.to_prediction(schedule, i, x, v)
    return schedule, x, v, kernels.transition(schedule, i, x, pred, noise_level=a)


def test_flow_sde_mean_and_std_match_the_formula():
    i, a = 3, 0.7
    schedule, x, v, g = _sde_case(i, a)
    t, t_next = schedule.sigmas[i].double(), schedule.sigmas[i + 1].double()
    sigma_t = a * math.sqrt(t / (1 - t))
    dt = t_next - t
    x64, v64 = x.double(), v.double()
    mean = x64 + (v64 + sigma_t**2 / (2 * t) * (x64 + (1 - t) * v64)) * dt  # dx = [v + σ²/(2t)(x+(1-t)v)]dt
    torch.testing.assert_close(g.mean.double(), mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(g.std.double(), torch.as_tensor(sigma_t * math.sqrt(-dt), dtype=torch.float64),
                               rtol=1e-5, atol=0)


def test_flow_sde_first_step_uses_capped_sigma():
    schedule, x, v, g = _sde_case(i=0, a=0.7)
    assert schedule.sigmas[0] == 1.0
    assert torch.isfinite(g.mean).all() and torch.isfinite(g.std)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_flow_sde_log_prob_matches_torch_normal(reduce):
    schedule, x, v, g = _sde_case()
    x_next = kernels.sample(g, generator=torch.Generator().manual_seed(7))
    normal = torch.distributions.Normal(g.mean.double(), g.std.double()).log_prob(x_next.double())
    expected = getattr(normal.flatten(1), reduce)(dim=1)  # (B,)
    torch.testing.assert_close(kernels.log_prob(g, x_next, reduce=reduce).double(), expected, rtol=1e-5, atol=1e-5)


def test_ddim_log_prob_matches_torch_normal_and_deterministic_step_has_none():
    scheduler, schedule = _ddim()
    x, out = torch.randn(SHAPE), torch.randn(SHAPE)
    g = kernels.transition(schedule, 2, x, kernels.to_prediction(schedule, 2, x, out), noise_level=1.0)
    x_next = kernels.sample(g, generator=torch.Generator().manual_seed(0))
    expected = torch.distributions.Normal(g.mean, g.std).log_prob(x_next).flatten(1).mean(1)
    torch.testing.assert_close(kernels.log_prob(g, x_next), expected, rtol=1e-5, atol=1e-5)
    g0 = kernels.transition(schedule, 2, x, kernels.to_prediction(schedule, 2, x, out), noise_level=0.0)
    with pytest.raises(ValueError, match="no density"):
        kernels.log_prob(g0, x_next)


def test_add_noise_matches_ddim_add_noise_and_flow_scale_noise():
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    scheduler, schedule = _ddim()
    for i in (0, 4, S - 1):
        t = scheduler.timesteps[i:i + 1]
        torch.testing.assert_close(kernels.add_noise(schedule, i, x0, noise), scheduler.add_noise(x0, noise, t),
                                   rtol=0, atol=1e-6)
    flow_scheduler, flow_schedule = _flow()
    for i in (0, 4, S - 1):
        t = flow_scheduler.timesteps[i:i + 1]
        torch.testing.assert_close(kernels.add_noise(flow_schedule, i, x0, noise),
                                   flow_scheduler.scale_noise(x0, t, noise), rtol=0, atol=1e-6)
