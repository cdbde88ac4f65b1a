"""The 2026 GRPO variants: each one's distinctive quantity pinned to a formula re-derived (numpy / float64)
from its reference code, on small tensors, plus a short run of each preset on a tiny SD3 pipeline."""
import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from steer import kernels
from steer.finetune import lora, presets
from steer.finetune.advantages import group_advantages, group_unbiased_advantages, multi_reward_advantages
from steer.finetune.config import GRPOConfig
from steer.finetune.grpo import grpo, policy_loss, sample_batch, train_steps
from steer.finetune import grpo_variants as variants
from steer.finetune.trainer import Trainer
from steer.pipelines import from_pipe
from steer.rewards.base import Reward
from steer.rewards.combine import WeightedSum
from steer.types import Schedule
from tests.fixtures.tiny import build
from tests.test_finetune import PROMPTS, Brightness

SHAPE = (3, 4, 8, 8)


def _flow_case(i, seed=0, steps=10):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    schedule = Schedule(kind="flow", timesteps=scheduler.timesteps, sigmas=scheduler.sigmas.float(), prediction_type="flow")
    g = torch.Generator().manual_seed(seed)
    x, v = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    return schedule, x, v, kernels.to_prediction(schedule, i, x, v)


# ---- CPS -------------------------------------------------------------------------------------------------
def test_cps_kernel_and_log_prob_are_flow_grpos_formula():
    i, a = 4, 0.8
    schedule, x, v, pred = _flow_case(i)
    g = kernels.transition(schedule, i, x, pred, a, sde_type="cps")
    s, s_next = float(schedule.sigmas[i]), float(schedule.sigmas[i + 1])
    x64, v64 = x.double().numpy(), v.double().numpy()
    std = s_next * math.sin(a * math.pi / 2)  # flow_grpo: std_dev_t = sigma_prev * sin(noise_level·π/2)
    x0, x1 = x64 - s * v64, x64 + (1 - s) * v64  # pred_original_sample, noise_estimate
    mean = x0 * (1 - s_next) + x1 * math.sqrt(s_next**2 - std**2)
    np.testing.assert_allclose(g.mean.double().numpy(), mean, atol=1e-5)
    assert float(g.std) == pytest.approx(std, rel=1e-6)
    x_next = kernels.sample(g, torch.Generator().manual_seed(1))
    ref = -((x_next.double().numpy() - mean) ** 2).reshape(SHAPE[0], -1).mean(axis=1)  # "remove all constants"
    np.testing.assert_allclose(variants.step_log_prob(g, x_next, "cps").double().numpy(), ref, rtol=1e-5)
    # coefficients preserved: x̂0's weight is 1 − σ_next and the two noises add up to variance σ_next²
    assert (s_next**2 - std**2) + std**2 == pytest.approx(s_next**2)
    last = kernels.transition(schedule, 9, x, kernels.to_prediction(schedule, 9, x, v), a, sde_type="cps")
    assert last.deterministic  # σ_next = 0: lands on x̂0, no density
    torch.testing.assert_close(last.mean, kernels.to_prediction(schedule, 9, x, v).x0)


def test_cps_is_refused_on_diffusion_and_with_ratio_norm():
    sched = Schedule(kind="diffusion", timesteps=torch.tensor([999, 500]), alphas_cumprod=torch.tensor([0.01, 0.5, 0.99]),
                     prediction_type="epsilon")
    x = torch.randn(SHAPE)
    pred = kernels.to_prediction(sched, 0, x, torch.randn(SHAPE))
    with pytest.raises(ValueError, match="use sde_type='sde'"):
        kernels.transition(sched, 0, x, pred, 1.0, sde_type="cps")
    with pytest.raises(ValueError, match="ratio_norm"):
        GRPOConfig(sde_type="cps", ratio_norm=True)
    with pytest.raises(ValueError, match="use kl_scaling='exact'"):
        GRPOConfig(sde_type="dance", kl_scaling="flow_grpo")
    with pytest.raises(ValueError, match="widen the range"):
        GRPOConfig(sde_window_size=4, sde_window_range=(0, 3))


# ---- DanceGRPO -------------------------------------------------------------------------------------------
def test_dance_sde_is_dancegrpos_flux_step():
    i, eta = 3, 0.3
    schedule, x, v, pred = _flow_case(i, seed=2)
    g = kernels.transition(schedule, i, x, pred, eta, sde_type="dance")
    s, s_next = schedule.sigmas[i].double(), schedule.sigmas[i + 1].double()
    x64, v64 = x.double(), v.double()
    dsigma = s_next - s
    x0 = x64 - s * v64
    score = -(x64 - x0 * (1 - s)) / s**2  # DanceGRPO flux_step, sde_solver=True
    mean = x64 + dsigma * v64 + (-0.5 * eta**2 * score) * dsigma
    torch.testing.assert_close(g.mean.double(), mean, rtol=0, atol=1e-5)
    assert float(g.std) == pytest.approx(eta * math.sqrt(float(s - s_next)), rel=1e-6)
    # = the Flow-GRPO drift with a constant σ_t = η
    drift = v64 + eta**2 / (2 * s) * (x64 + (1 - s) * v64)
    torch.testing.assert_close(g.mean.double(), x64 + drift * dsigma, rtol=0, atol=1e-5)


def test_shared_noise_is_one_draw_per_group():
    proc = from_pipe(build("sd3"), num_inference_steps=2, guidance_scale=1.0)
    x = variants.initial_noise(proc, 2, 3, True, torch.Generator().manual_seed(0))  # (6, ...)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2]) and torch.equal(x[3], x[5])
    assert not torch.equal(x[0], x[3])
    y = variants.initial_noise(proc, 2, 3, False, torch.Generator().manual_seed(0))
    assert not torch.equal(y[0], y[1])


def test_dance_timestep_selection_drops_the_last_step():
    cfg = GRPOConfig(timestep_fraction=0.6, timestep_selection="random_but_last")
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        steps = train_steps(list(range(12)), cfg, g)
        assert len(steps) == int(0.6 * 11) == len(set(steps)) and 11 not in steps
        seen |= set(steps)
    assert seen == set(range(11))


def test_group_unbiased_advantages_are_torch_std_plus_1e8():
    r = torch.tensor([0.1, 0.4, 0.2, 0.9, 1.0, 1.0, 3.0, 0.0])
    ref = []
    for grp in r.double().numpy().reshape(2, 4):
        ref += list((grp - grp.mean()) / (grp.std(ddof=1) + 1e-8))
    np.testing.assert_allclose(group_unbiased_advantages(r, 4).numpy(), np.clip(ref, -5, 5), rtol=1e-6)
    assert not np.allclose(group_advantages(r, 4).numpy(), np.clip(ref, -5, 5), rtol=1e-3)  # ddof 0 differs


# ---- Flow-GRPO-Fast / Flow-Factory / MixGRPO windows -----------------------------------------------------
def test_fast_window_start_is_randint_lo_to_hi_minus_size():
    g = torch.Generator().manual_seed(0)
    starts = [variants.fast_window(0, 5, 3, g)[0] for _ in range(3000)]
    counts = np.bincount(starts, minlength=3)
    assert set(starts) == {0, 1, 2} and np.all(np.abs(counts / 3000 - 1 / 3) < 0.03)  # randint(0, 5 − 3) inclusive
    assert variants.fast_window(2, 7, 2, g) in ([2, 3], [3, 4], [4, 5], [5, 6])
    subsets = {tuple(variants.subset_window(1, 6, 2, g)) for _ in range(400)}
    assert subsets == {(a, b) for a in range(1, 6) for b in range(a + 1, 6)}  # any 2 of steps 1..5


def _mixgrpo_states(steps, size, iters_per_group, stride, max_timesteps):
    """MixGRPO's GRPOTrainingStates (progressive, prog_overlap, roll_back), re-derived: the window used at
    each optimizer step."""
    cur, it, out = 0, 0, []
    for _ in range(steps):
        out.append(list(range(cur, min(cur + size, max_timesteps))))
        it += 1
        if it >= iters_per_group:
            it, cur = 0, cur + stride
        if cur > max_timesteps:
            cur, it = 0, 0
    return out


def test_mix_window_follows_mixgrpos_progressive_schedule():
    S, W = 25, 4
    ref = _mixgrpo_states(1500, W, 25, 1, S - 2)
    ours = [variants.mix_window(k, W, 25, 1, S) for k in range(1500)]
    # identical except the reference's empty window at start S − 2 (25 steps with nothing to train), skipped here
    assert [w for w in ref if w] == [w for w in ours][:len([w for w in ref if w])]
    assert ours[0] == [0, 1, 2, 3] and ours[25] == [1, 2, 3, 4] and ours[22 * 25] == [22] and ours[23 * 25] == [0, 1, 2, 3]
    assert all(w and max(w) < S - 2 for w in ours)


def test_window_makes_other_steps_ode_and_trains_only_the_window(tmp_path):
    proc = from_pipe(build("sd3"), num_inference_steps=6, guidance_scale=1.0)
    cfg = GRPOConfig(group_size=2, max_steps=1, sde_window_size=2, sde_window_range=(0, 4), noise_level=0.7)
    trainer = Trainer(proc, Brightness(), PROMPTS, cfg, tmp_path, method="grpo")
    batch = sample_batch(trainer, torch.Generator().manual_seed(0))
    window = batch["steps"]
    assert len(window) == 2 and window[1] == window[0] + 1 and window[1] <= 3
    for i in range(6):
        x, x_next = batch["states"][i], batch["states"][i + 1]
        with torch.no_grad():
            ode = kernels.transition(proc.schedule, i, x, proc.predict(x, i, trainer.cond(batch["idx"])), 0.0)
        if i in window:
            assert not torch.allclose(x_next, ode.mean, atol=1e-4)  # SDE: noise was added
        else:
            torch.testing.assert_close(x_next, ode.mean, rtol=0, atol=1e-5)  # ODE elsewhere
            assert bool((batch["log_probs"][i] == 0).all())


# ---- GRPO-Guard ------------------------------------------------------------------------------------------
def test_guard_log_ratio_is_centred_and_rescaled():
    g = torch.Generator().manual_seed(0)
    B, D, s = 4, 5000, torch.tensor(0.05)
    mean_old = torch.randn(B, D, generator=g)
    delta = 0.01 * torch.randn(B, D, generator=g)
    eps = torch.randn(B, D, generator=g)
    x_next = mean_old + s * eps
    old, new = kernels.Gaussian(mean_old, s), kernels.Gaussian(mean_old + delta, s)
    lp_old, lp_new = kernels.log_prob(old, x_next), kernels.log_prob(new, x_next)
    guard = variants.guard_log_ratio(lp_new, lp_old, new.mean, old.mean, s)
    # Flow-Factory: (log p_θ − log p_old)·s + mse/(2s) == mean(ε·Δμ): the −‖Δμ‖²/(2s²) shift cancels, 1/s is gone
    torch.testing.assert_close(guard.double(), (eps * delta).double().mean(dim=1), rtol=1e-3, atol=1e-7)
    plain = lp_new - lp_old
    shift = -(delta**2).mean(dim=1) / (2 * s**2)  # the plain log-ratio's mean under the old policy
    torch.testing.assert_close(plain.double(), (shift + (eps * delta).mean(dim=1) / s).double(), rtol=1e-3, atol=1e-5)
    assert bool((shift < 0).all())


# ---- SAGE-GRPO -------------------------------------------------------------------------------------------
def test_sage_sde_is_sage_grpos_step():
    i, eta = 3, 0.5
    schedule, x, v, pred = _flow_case(i, seed=4)
    g = kernels.transition(schedule, i, x, pred, eta, sde_type="sage")
    s, s_next = schedule.sigmas[i].double(), schedule.sigmas[i + 1].double()
    x64, v64 = x.double(), v.double()
    var = eta**2 * (-(s - s_next) + torch.log((1 - s_next) / (1 - min(float(s), 1 - 3e-3))))  # std_dev_t_sq
    score = -(x64 - (x64 - s * v64) * (1 - s)) / s**2
    mean = x64 + (s_next - s) * v64 + 0.5 * var * score
    torch.testing.assert_close(g.mean.double(), mean, rtol=0, atol=1e-5)
    assert float(g.std) == pytest.approx(float(var.sqrt()), rel=1e-5)
    assert float(var) != pytest.approx(eta**2 * float(s - s_next), rel=1e-3)


def _sage_grad_norms(sigmas, eta, sde_type):
    """SAGE-GRPO compute_log_prob_grad_norms (sde_solver=True), re-derived in plain Python."""
    out = []
    for k in range(len(sigmas) - 1):
        s, n = float(sigmas[k]), float(sigmas[k + 1])
        dt = n - s
        if sde_type == "dance":
            std, jac = eta * math.sqrt(max(-dt, 1e-12)), dt * (1 + 0.5 * eta**2 * (1 - s) / max(s, 1e-12))
        elif sde_type == "sage":
            var = eta**2 * (dt + math.log((1 - n) / max(1 - min(s, 1 - 3e-3), 1e-12)))
            std, jac = math.sqrt(var), dt - 0.5 * var * (1 - s) / s
        elif sde_type == "sde":
            cap = float(sigmas[1])
            st = math.sqrt(max(s, 1e-12) / max(1 - (cap if s == 1 else s), 1e-12)) * eta
            std, jac = st * math.sqrt(-dt), dt * (1 + st**2 * (1 - s) / (2 * s))
        else:  # cps
            std = max(n * math.sin(eta * math.pi / 2), 1e-12)
            jac = -s * (1 - n) + (1 - s) * math.sqrt(max(n**2 - (n * math.sin(eta * math.pi / 2)) ** 2, 0))
        g = abs(jac) / max(std, 1e-12)
        out.append(g if math.isfinite(g) and g > 0 else 1.0)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("sde_type", ["sage", "dance", "sde", "cps"])
def test_grad_balance_scales_are_sage_grpos_equalizer(sde_type):
    schedule = _flow_case(0, steps=12)[0]
    norms = _sage_grad_norms(schedule.sigmas.double(), 0.7, sde_type)
    expected = norms.median() / norms  # compute_grad_balancing_factors
    got = variants.grad_balance_scales(schedule, 0.7, sde_type).double()
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=0)
    assert float(got.max() / got.min()) > 1.5  # the equalizer really reweights the steps


# ---- multi-reward ----------------------------------------------------------------------------------------
class Redness(Reward):
    name, differentiable = "redness", True

    def score(self, images, prompts):
        return images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3))


def test_multi_reward_advantages_normalize_each_reward_then_weight():
    cfg = GRPOConfig(group_size=4, advantages="group_unbiased", multi_reward="advantages")
    r1 = torch.tensor([0.1, 0.2, 0.3, 0.4, 1.0, 1.1, 0.9, 1.3])
    r2 = torch.tensor([10.0, 50.0, 20.0, 0.0, 5.0, 5.5, 6.0, 4.0])
    w = [1.0, 0.5]
    ref = []
    for g1, g2 in zip(r1.double().numpy().reshape(2, 4), r2.double().numpy().reshape(2, 4)):
        a1 = (g1 - g1.mean()) / (g1.std(ddof=1) + 1e-8)  # MixGRPO advantage_aggr: per model, then weighted sum
        a2 = (g2 - g2.mean()) / (g2.std(ddof=1) + 1e-8)
        ref += list(w[0] * a1 + w[1] * a2)
    got = multi_reward_advantages(cfg, torch.stack([r1, r2]), w, ["a"] * 8)
    np.testing.assert_allclose(got.numpy(), np.clip(ref, -5, 5), rtol=1e-5)
    summed = group_unbiased_advantages(w[0] * r1 + w[1] * r2, 4)  # the weighted sum of raw rewards: r2 dominates
    assert not np.allclose(got.numpy(), summed.numpy(), atol=1e-2)


def test_sample_batch_scores_each_term_for_multi_reward(tmp_path):
    proc = from_pipe(build("sd3"), num_inference_steps=2, guidance_scale=1.0)
    reward = WeightedSum([(1.0, Brightness()), (2.0, Redness())])
    cfg = GRPOConfig(group_size=3, max_steps=1, multi_reward="advantages")
    trainer = Trainer(proc, reward, PROMPTS, cfg, tmp_path, method="grpo")
    batch = sample_batch(trainer, torch.Generator().manual_seed(0))
    terms = torch.stack([Brightness()(batch["images"], [""] * 3), Redness()(batch["images"], [""] * 3)])
    torch.testing.assert_close(batch["rewards"].cpu(), terms[0] + 2 * terms[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch["advantages"], multi_reward_advantages(cfg, terms, [1.0, 2.0], [""] * 3))


# ---- the presets run -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["flow_grpo_fast", "mix_grpo", "dance_grpo", "grpo_guard", "sage_grpo"])
def test_variant_preset_trains_a_tiny_sd3(tmp_path, name):
    over = dict(max_steps=2, group_size=2, prompts_per_step=1, lora_rank=2, lora_alpha=2.0, learning_rate=1e-2,
                clip_range=0.2, inner_epochs=2, target_modules=("to_q", "to_v"), ema_decay=None)
    if name in ("flow_grpo_fast", "grpo_guard"):
        over["sde_window_range"] = (0, 4)
    cfg = presets.config(name, **over)
    proc = from_pipe(build("sd3"), num_inference_steps=6, guidance_scale=1.0)
    res = grpo(proc, Brightness(), PROMPTS, cfg, out_dir=tmp_path)
    assert len(res.metrics) == 2 and all(math.isfinite(m["loss"]) for m in res.metrics)
    moved = [v for k, v in lora.lora_state_dict(proc).items() if "lora_B" in k]
    assert moved and any(float(v.abs().max()) > 0 for v in moved)  # B starts at 0: the policy gradient moved it


def test_guard_ratio_in_training_is_exp_mean_eps_delta_mu(tmp_path):
    proc = from_pipe(build("sd3"), num_inference_steps=4, guidance_scale=1.0)
    cfg = GRPOConfig(group_size=3, max_steps=1, learning_rate=5e-2, clip_range=0.2, ratio_norm=True, noise_level=0.7)
    trainer = Trainer(proc, Brightness(), PROMPTS, cfg, tmp_path, method="grpo")
    batch = sample_batch(trainer, torch.Generator().manual_seed(0))
    cond = trainer.cond(batch["idx"])
    for i in batch["steps"]:
        loss, info = policy_loss(trainer, batch, i, cond)
        torch.testing.assert_close(info["ratio"], torch.ones(3), atol=1e-6, rtol=0)
        trainer.backward(loss)
    trainer.optimizer.step()
    i = batch["steps"][1]
    _, info = policy_loss(trainer, batch, i, cond)
    x, x_next = batch["states"][i], batch["states"][i + 1]
    with torch.no_grad():
        g = kernels.transition(proc.schedule, i, x, proc.predict(x, i, cond), 0.7)
    eps = (x_next - batch["means"][i]) / g.std
    expected = torch.exp((eps * (g.mean - batch["means"][i])).flatten(1).mean(dim=1))
    torch.testing.assert_close(info["ratio"], expected, rtol=1e-4, atol=1e-6)
    assert (info["ratio"] - 1).abs().max() > 1e-7


def test_guard_window_run_resumes_bitwise(tmp_path):
    """A stored batch now carries the kernels' means (GRPO-Guard) and its window's steps: both survive a resume."""
    cfg = presets.config("grpo_guard", max_steps=3, checkpoint_every=1, group_size=2, lora_rank=2, lora_alpha=2.0,
                         learning_rate=1e-2, clip_range=0.2, inner_epochs=2, target_modules=("to_q", "to_v"),
                         ema_decay=None, sde_window_range=(0, 4))

    def process():
        return from_pipe(build("sd3"), num_inference_steps=5, guidance_scale=1.0)

    straight = process()
    grpo(straight, Brightness(), PROMPTS, cfg, out_dir=tmp_path / "a")

    class Stop(Exception):
        pass

    def stop(record):
        if record["step"] == 1:  # mid inner epoch: the stored batch is reused after the resume
            raise Stop

    with pytest.raises(Stop):
        grpo(process(), Brightness(), PROMPTS, cfg, out_dir=tmp_path / "b", callback=stop)
    resumed = process()
    grpo(resumed, Brightness(), PROMPTS, cfg, out_dir=tmp_path / "b", resume=True)
    a, b = lora.lora_state_dict(straight), lora.lora_state_dict(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
