"""Fine-tuning presets: each reference's defaults, and the per-step quantities they select pinned to
formulas re-derived from the papers and reference code (numpy, on small tensors)."""
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from steer import chain, kernels
from steer.cli import app
from steer.finetune import lora, presets
from steer.finetune.advantages import global_std_advantages, group_advantages, per_prompt_advantages
from steer.finetune.config import DraftConfig, GRPOConfig
from steer.finetune.draft import alignprop_detach, truncation
from steer.finetune.grpo import clipped_surrogate, grpo, kl_variance, train_steps
from steer.pipelines import from_pipe
from tests.fixtures.tiny import build
from tests.test_finetune import PROMPTS, Brightness


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_builds_and_states_each_option_origin(name):
    p = presets.PRESETS[name]
    cfg = presets.config(name)
    assert cfg.method == p.method and cfg.preset == name
    covered = {k.strip() for key in p.origin for k in key.split("/")}
    for key, value in p.config.items():
        assert getattr(cfg, key) == (tuple(value) if isinstance(value, (list, tuple)) else value), key
        assert key in covered or (key.startswith("adam_") and "adam_*" in covered), f"{name}: no origin for {key}"
    assert {"num_inference_steps", "guidance_scale"} <= covered and p.deviations


def test_preset_values_are_the_references():
    ddpo, fg, ap = presets.PRESETS["ddpo"], presets.PRESETS["flow_grpo"], presets.PRESETS["alignprop"]
    assert (ddpo.process, ddpo.config["noise_level"], ddpo.config["clip_range"], ddpo.config["learning_rate"]) == \
        ({"num_inference_steps": 50, "guidance_scale": 5.0}, 1.0, 1e-4, 3e-4)
    assert (ddpo.config["stat_buffer_size"], ddpo.config["stat_min_count"], ddpo.config["advantages"]) == (16, 16, "per_prompt")
    assert (fg.process, fg.config["kl_beta"], fg.config["group_size"], fg.config["timestep_fraction"]) == \
        ({"num_inference_steps": 10, "guidance_scale": 4.5}, 0.04, 24, 0.99)
    assert (fg.config["lora_rank"], fg.config["lora_alpha"], fg.config["kl_scaling"]) == (32, 64.0, "flow_grpo")
    assert (ap.config["learning_rate"], ap.config["noise_level"], ap.process["num_inference_steps"]) == (1e-3, 1.0, 50)


# ---- advantages ---------------------------------------------------------------------------------------
def _ddpo_tracker(history, prompts, rewards, buffer_size=16, min_count=16):
    """ddpo-pytorch's PerPromptStatTracker.update, re-derived in numpy."""
    prompts, rewards = np.array(prompts), np.asarray(rewards, dtype=np.float64)
    adv = np.empty_like(rewards)
    for prompt in np.unique(prompts):
        pr = rewards[prompts == prompt]
        history[prompt] = (history.get(prompt, []) + list(pr))[-buffer_size:]
        if len(history[prompt]) < min_count:
            mean, std = np.mean(rewards), np.std(rewards) + 1e-6
        else:
            mean, std = np.mean(history[prompt]), np.std(history[prompt]) + 1e-6
        adv[prompts == prompt] = (pr - mean) / std
    return np.clip(adv, -5, 5)


def test_ddpo_per_prompt_advantages_match_the_tracker_over_steps():
    g = torch.Generator().manual_seed(0)
    ours, ref = {}, {}
    for step in range(6):  # min_count 3: batch statistics first, then each prompt's buffer
        prompts = ["cat", "dog", "cat", "fish"][: 2 + step % 3]
        r = torch.randn(len(prompts), generator=g, dtype=torch.float64) * 3 + step
        got = per_prompt_advantages(r, prompts, ours, buffer_size=4, min_count=3)
        np.testing.assert_allclose(got.numpy(), _ddpo_tracker(ref, prompts, r.numpy(), 4, 3), rtol=1e-5, atol=1e-5)
    assert {k: [round(v, 9) for v in b] for k, b in ours.items()} == \
        {k: [round(float(v), 9) for v in b] for k, b in ref.items()}
    assert max(len(b) for b in ours.values()) == 4


def test_flow_grpo_global_std_and_group_advantages():
    r = torch.tensor([1.0, 2.0, 4.0, 10.0, 10.0, 13.0], dtype=torch.float64)
    groups = r.numpy().reshape(2, 3)
    ref = (groups - groups.mean(1, keepdims=True)) / (np.std(r.numpy()) + 1e-4)
    np.testing.assert_allclose(global_std_advantages(r, 3).numpy(), np.clip(ref, -5, 5).reshape(-1), rtol=1e-5)
    ref_g = (groups - groups.mean(1, keepdims=True)) / (groups.std(1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(group_advantages(r, 3).numpy(), np.clip(ref_g, -5, 5).reshape(-1), rtol=1e-5)


# ---- ratio, clipped loss, KL ------------------------------------------------------------------------------
def test_clipped_surrogate_is_ppo_as_ddpo_writes_it():
    adv = torch.tensor([1.0, -2.0, 0.5, -0.1])
    ratio = torch.tensor([1.3, 1.3, 0.6, 0.99])
    eps = 0.2
    unclipped, clipped = -adv.numpy() * ratio.numpy(), -adv.numpy() * np.clip(ratio.numpy(), 1 - eps, 1 + eps)
    assert float(clipped_surrogate(adv, ratio, eps)) == pytest.approx(float(np.mean(np.maximum(unclipped, clipped))))


def test_kl_scalings_on_a_flow_sde_step():
    """exact: the kernel variance std² = σ_t²·|Δt|; flow_grpo: σ_t² = a²·σ/(1−σ) (its std_dev_t²)."""
    proc = from_pipe(build("sd3"), num_inference_steps=4, guidance_scale=1.0)
    s, a = proc.schedule.sigmas, 0.7
    x = proc.init_noise(1, torch.Generator().manual_seed(0))
    for i in (1, 2):
        g = chain.propose(proc, x, i, proc.prepare(["a"]), noise_level=a).kernel
        sigma_t2 = a ** 2 * float(s[i]) / (1 - float(s[i]))
        assert float(kl_variance(proc.schedule, i, g.std, "flow_grpo")) == pytest.approx(sigma_t2, rel=1e-5)
        assert float(kl_variance(proc.schedule, i, g.std, "exact")) == pytest.approx(
            sigma_t2 * float(s[i] - s[i + 1]), rel=1e-5)


def test_kl_scalings_agree_on_diffusion():
    proc = from_pipe(build("sd"), num_inference_steps=3, guidance_scale=1.0)
    std = torch.tensor(0.3)
    assert torch.equal(kl_variance(proc.schedule, 1, std, "flow_grpo"), kl_variance(proc.schedule, 1, std, "exact"))


# ---- which steps train --------------------------------------------------------------------------------------
def test_flow_grpo_trains_the_first_int_fraction_steps_in_order():
    cfg = GRPOConfig(timestep_fraction=0.99, timestep_selection="first")
    assert train_steps(list(range(10)), cfg, torch.Generator()) == list(range(9))  # the last step never trains
    rnd = train_steps(list(range(10)), GRPOConfig(timestep_fraction=0.5), torch.Generator().manual_seed(1))
    assert len(rnd) == 5 == len(set(rnd)) and set(rnd) <= set(range(10))


def test_alignprop_truncation_is_its_gaussian_on_50_steps():
    cfg = presets.config("alignprop")
    g = torch.Generator().manual_seed(0)
    d = np.array([alignprop_detach(cfg, 50, g) for _ in range(4000)])
    assert d.min() >= 1 and d.max() <= 49
    # the reference: D = int(X), X ~ N(42, 5), redrawn until 1 <= D < 50, so P(D = k) ∝ P(k <= X < k + 1)
    cdf = lambda v: 0.5 * (1 + math.erf((v - 42) / (5 * math.sqrt(2))))  # noqa: E731
    p = np.array([cdf(k + 1) - cdf(k) for k in range(1, 50)])
    p /= p.sum()
    expected = float((np.arange(1, 50) * p).sum())  # ≈ 40.9: the top 5.5% (X >= 50) is redrawn
    assert abs(d.mean() - expected) < 0.25, (d.mean(), expected)
    assert abs(d.std() - float(np.sqrt(((np.arange(1, 50) - expected) ** 2 * p).sum()))) < 0.25
    ks = [truncation(cfg, 50, g) for _ in range(200)]
    assert all(1 <= k <= 49 for k in ks)  # gradients through the last K = 50 − D steps, never all 50
    uniform = DraftConfig(variant="alignprop", truncation="uniform")
    u = [truncation(uniform, 10, g) for _ in range(500)]
    assert set(u) == set(range(1, 11))


# ---- detaching guidance's unconditional branch -----------------------------------------------------------
def test_detach_uncond_leaves_only_the_conditional_gradient():
    from dataclasses import replace

    proc = from_pipe(build("sd"), num_inference_steps=2, guidance_scale=3.0)
    params = lora.attach_lora(proc.pipe, 2, init_seed=0)
    with torch.no_grad():
        for p in params:
            p.add_(0.1)  # B = 0 at init would make every LoRA gradient path but one vanish
    cond = proc.prepare(["a red circle"])
    x = proc.init_noise(1, torch.Generator().manual_seed(0))

    def grads(c):
        for p in params:
            p.grad = None
        proc.denoise(x, 0, c).sum().backward()
        return torch.cat([p.grad.flatten() for p in params])

    detached = grads(replace(cond, detach_uncond=True))
    positive = replace(cond, tensors={k: v for k, v in cond.tensors.items() if not k.startswith("negative_")},
                       guidance_scale=1.0)
    torch.testing.assert_close(detached, 3.0 * grads(positive), rtol=1e-3, atol=2e-5)  # batched vs alone
    assert not torch.allclose(grads(cond), detached, rtol=1e-3, atol=1e-6)


# ---- running a preset -----------------------------------------------------------------------------------------
def test_ddpo_preset_trains_and_resumes_bitwise(tmp_path):
    cfg = presets.config("ddpo", max_steps=3, checkpoint_every=1, prompts_per_step=2, stat_min_count=2,
                         learning_rate=1e-2, clip_range=0.1, target_modules=("to_q", "to_v"))

    def process():
        return from_pipe(build("sd"), num_inference_steps=2, guidance_scale=1.0)

    straight = process()
    res = grpo(straight, Brightness(), PROMPTS, cfg, out_dir=tmp_path / "a")
    assert all(math.isfinite(m["loss"]) for m in res.metrics)

    class Stop(Exception):
        pass

    def stop(record):
        if record["step"] == 2:
            raise Stop

    with pytest.raises(Stop):
        grpo(process(), Brightness(), PROMPTS, cfg, out_dir=tmp_path / "b", callback=stop)
    resumed = process()
    grpo(resumed, Brightness(), PROMPTS, cfg, out_dir=tmp_path / "b", resume=True)  # the reward history resumes too
    a, b = lora.lora_state_dict(straight), lora.lora_state_dict(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_preset_sets_the_chain_and_records_itself(tmp_path):
    model = tmp_path / "m"
    build("sd").save_pretrained(model)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    run = lambda *a: CliRunner().invoke(app, ["finetune", "--reward", "tests.test_finetune:Brightness", "--prompts",  # noqa: E731
                                              str(prompts), "--model", str(model), *map(str, a)])
    res = run("--preset", "alignprop", "--steps", "3", "--max-steps", "1", "--out", tmp_path / "o", "--lora-rank", "2")
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    assert (cfg["preset"], cfg["variant"], cfg["learning_rate"], cfg["lora_rank"]) == ("alignprop", "alignprop", 1e-3, 2)
    bad = run("--preset", "flow_grpo", "--method", "draft", "--out", tmp_path / "x")
    assert bad.exit_code == 2 and "preset 'flow_grpo' is for --method grpo" in bad.output
    unknown = run("--preset", "ddp0", "--out", tmp_path / "y")
    assert unknown.exit_code == 2 and "unknown preset 'ddp0'" in unknown.output and "'ddpo'" in unknown.output
    none = run("--out", tmp_path / "z")
    assert none.exit_code == 2 and "--method is required" in none.output
