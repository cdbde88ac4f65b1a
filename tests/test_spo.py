"""SPO: the step-wise DPO loss on clamped kernel log-ratios and the softmax-gap pair rule against formulas
re-derived from the reference code, a rollout's pairs checked against their definition (one parent state, k
kernel draws, ranked by the next step's x̂0), the grey world moved both ways, and bad settings."""
from __future__ import annotations

import json
import math

import pytest
import torch

from steer import chain
from steer.finetune import SPOConfig, lora, presets, spo
from steer.finetune.command import build_config
from steer.finetune.spo import best_and_worst, rollout, spo_loss
from steer.finetune.trainer import Trainer
from steer.scoring import decode_and_score
from tests.fixtures import grey
from tests.test_finetune import PIXEL_WIDE, PROMPTS, Brightness, Darkness, Interrupt, _stop_at, tiny_process
from tests.test_finetune_cli import invoke, model_dir, prompts  # noqa: F401  (fixtures)


# ---- the distinctive quantities on small tensors -------------------------------------------------------------
def test_spo_loss_is_dpo_on_clamped_kernel_log_ratios():
    lp_w, ref_w = torch.tensor([-1.00, -1.00, -1.00]), torch.tensor([-1.05, -0.80, -1.00])
    lp_l, ref_l = torch.tensor([-2.00, -2.00, -2.00]), torch.tensor([-1.98, -2.50, -2.00])
    beta, eps = 10.0, 0.1
    expected = []
    for k in range(3):  # the reference: clamp(exp(lp − lp_ref), 1 − ε, 1 + ε); −log σ(β log ρ_w − β log ρ_l)
        rho_w = min(max(math.exp(lp_w[k] - ref_w[k]), 1 - eps), 1 + eps)
        rho_l = min(max(math.exp(lp_l[k] - ref_l[k]), 1 - eps), 1 + eps)
        z = beta * (math.log(rho_w) - math.log(rho_l))
        expected.append(-math.log(1 / (1 + math.exp(-z))))
    loss, inside = spo_loss(lp_w, lp_l, ref_w, ref_l, beta, eps)
    assert float(loss) == pytest.approx(sum(expected) / 3, rel=1e-6)
    assert (inside > 0).tolist() == [True, False, False]
    # pair 2: ρ_w = e^-0.2 → 0.9 and ρ_l = e^0.5 → 1.1 both clamped: no gradient flows through them
    lp = torch.tensor([-1.00, -0.80], requires_grad=True)
    spo_loss(lp[:1], lp[1:], torch.tensor([-0.80]), torch.tensor([-1.30]), beta, eps)[0].backward()
    assert torch.equal(lp.grad, torch.zeros(2))
    assert float(spo_loss(ref_w, ref_l, ref_w, ref_l, beta, eps)[0]) == pytest.approx(math.log(2))  # θ = ref


def test_best_and_worst_keeps_a_pair_when_the_softmax_gap_exceeds_the_threshold():
    r = torch.tensor([0.1, 0.9, 0.5, 0.30, 0.20, 0.35, 2.0, -1.0, 0.0])  # 3 prompts × k = 3, prompt-major
    win, lose, keep = best_and_worst(r, 3, threshold=0.3)
    assert win.tolist() == [1, 5, 6] and lose.tolist() == [0, 4, 7]
    gaps = [math.tanh((0.9 - 0.1) / 2), math.tanh((0.35 - 0.20) / 2), math.tanh(3.0 / 2)]  # softmax([a, b]) gap
    assert keep.tolist() == [g > 0.3 for g in gaps] == [True, False, True]
    assert best_and_worst(torch.tensor([0.2, 0.2]), 2, threshold=0.0)[2].tolist() == [False]  # ties never kept


# ---- a rollout's pairs against their definition ------------------------------------------------------------
@pytest.fixture(scope="module")
def grey_state():
    return grey.train_state()


@pytest.mark.parametrize("family", ["grey", "sd"])
def test_rollout_pairs_share_a_parent_kernel_and_rank_by_the_next_steps_x0(tmp_path, grey_state, family):
    # the grey world's last step lands on ᾱ = 1 (deterministic: no candidates); the tiny SD's last step is
    # stochastic, so its last pairs are ranked by the final samples themselves
    P, k, S, start = 2, 3, 4, 1
    process = grey.process(grey_state, num_inference_steps=S) if family == "grey" else tiny_process(steps=S)
    texts = ["grey"] if family == "grey" else PROMPTS
    cfg = SPOConfig(samples_per_step=k, start_step=start, threshold=0.0, prompts_per_step=P, target_modules=PIXEL_WIDE)
    trainer = Trainer(process, Brightness(), texts, cfg, tmp_path, method="spo")
    out = rollout(trainer, torch.Generator().manual_seed(0))
    # denoiser calls: P per step up to the first branching one, then P·k per step (candidates' x̂0)
    assert trainer.trace.nfe == P * (start + 1) + P * k * (S - start - 1)
    last = S if family == "sd" else S - 1
    assert sorted(set(out.step.tolist())) == list(range(start, last)) and out.x.shape[0] <= P * (last - start)
    assert out.rewards.shape == ((P * k,) if family == "sd" else (P,))
    cond = process.prepare([texts[j] for j in out.idx.tolist()])
    for j in range(out.x.shape[0]):
        i, x, c = int(out.step[j]), out.x[j:j + 1], cond.index([j])
        g = chain.propose(process, x, i, c, noise_level=1.0).kernel
        assert not g.deterministic and not torch.equal(out.win[j], out.lose[j])
        pair = torch.cat([out.win[j:j + 1], out.lose[j:j + 1]])  # (2, ...)
        z2 = ((pair - g.mean) / g.std).pow(2).flatten(1).mean(dim=1)  # both are draws of x_i's kernel
        assert torch.allclose(z2, torch.ones(2), atol=0.6), z2
        # ranked by the reward of the x̂0 the next step predicts from each candidate (the samples at the end)
        x0 = process.predict(pair, i + 1, cond.index([j, j])).x0 if i < S - 1 else pair
        r = decode_and_score(process, Brightness(), x0, [cond.prompts[j]] * 2)[1]
        assert float(r[0]) > float(r[1])


# ---- end to end: the grey world moves toward what the step-wise pairs prefer -----------------------------------
def test_spo_moves_fresh_samples_both_ways(tmp_path, grey_state):
    # rollouts of 8 prompts branching at steps 0-2 of 4, k = 4, every strictly ordered pair kept (measured ±0.4
    # after 30 steps)
    base = grey.brightness(grey.process(grey_state), 1.0)
    moved = {}
    for reward in (Brightness(), Darkness()):
        process = grey.process(grey_state)
        cfg = SPOConfig(start_step=0, threshold=0.0, max_steps=10, learning_rate=3e-3, prompts_per_step=8,
                        train_batch_size=8, target_modules=PIXEL_WIDE)
        result = spo(process, reward, ["grey"], cfg, out_dir=tmp_path / reward.name)
        moved[reward.name] = grey.brightness(process, 1.0) - base
        assert result.metrics[-1]["pairs"] == 8 and result.metrics[0]["loss"] == pytest.approx(math.log(2))
    fresh = grey.process(grey_state)  # the saved LoRA reloads to the trained model
    lora.load_lora(fresh, result.lora_dir)
    assert grey.brightness(fresh, 1.0) - base == pytest.approx(moved["darkness"], abs=1e-5)
    print(f"spo: base {base:.4f}, moved {moved}")
    assert moved["brightness"] > 0.05 and moved["darkness"] < -0.05, moved


def test_bad_settings_are_one_line_errors_naming_the_fix(tmp_path, grey_state):
    process = grey.process(grey_state)
    with pytest.raises(ValueError, match="lower start_step"):
        spo(process, Brightness(), ["grey"], SPOConfig(start_step=4), out_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="lower threshold"):  # brightness gaps are ~0.1: softmax gaps < 0.9
        spo(process, Brightness(), ["grey"], SPOConfig(start_step=2, threshold=0.9, target_modules=PIXEL_WIDE),
            out_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="samples_per_step must be an integer >= 2"):
        SPOConfig(samples_per_step=1)
    with pytest.raises(ValueError, match="noise_level must be > 0"):
        SPOConfig(noise_level=0.0)
    cfg = build_config("spo", {"max_steps": 3}, ["start_step=2", "threshold=0"], {}, base=dict(presets.PRESETS["spo"].config))
    assert (cfg.start_step, cfg.threshold, cfg.samples_per_step, cfg.max_steps) == (2, 0.0, 4, 3)


# ---- resume and the command line ---------------------------------------------------------------------------
def test_the_pair_buffer_survives_a_resume_bitwise(tmp_path):
    # 2 prompts × steps 0-2 of 3 (tiny SD: every step stochastic) = up to 6 pairs, 2 per micro-batch: the
    # interrupted run stops with pairs left in its buffer, and the resumed one trains on them, not a new rollout
    cfg = SPOConfig(samples_per_step=2, start_step=0, threshold=0.0, prompts_per_step=2, train_batch_size=2,
                    max_steps=5, checkpoint_every=1, learning_rate=1e-2, target_modules=PIXEL_WIDE)
    straight = tiny_process(steps=3)
    result = spo(straight, Brightness(), PROMPTS, cfg, out_dir=tmp_path / "a")
    with pytest.raises(Interrupt):
        spo(tiny_process(steps=3), Brightness(), PROMPTS, cfg, out_dir=tmp_path / "b", callback=_stop_at(2))
    resumed = tiny_process(steps=3)
    again = spo(resumed, Brightness(), PROMPTS, cfg, out_dir=tmp_path / "b", resume=True)
    a, b = lora.lora_state_dict(straight), lora.lora_state_dict(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["nfe"] for m in again.metrics] == [m["nfe"] for m in result.metrics[2:]]


def test_spo_runs_from_the_command_line_with_the_preset_overridden(tmp_path, prompts, model_dir):
    result = invoke("--preset", "spo", "--reward", "tests.test_finetune:Brightness", "--prompts", prompts,
                    "--model", model_dir, "--steps", "3", "--guidance", "1", "--out", tmp_path / "run",
                    "--max-steps", "2", "--set", "start_step=1", "--set", "threshold=0",
                    "--set", "prompts_per_step=2", "--set", "samples_per_step=2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").exists()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["method"], config["preset"], config["start_step"], config["beta"]) == ("spo", "spo", 1, 10.0)
