"""MaPO, D3PO and PRDP: each loss against the formula re-derived from the reference code / paper on small
tensors, D3PO's pairs sharing x_T, MaPO's data sources and its reference-free forward count, and tiny
runs whose LoRA changes and loads into diffusers (the grey world: test_preference_online_grey.py)."""
from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from steer.cli import app
from steer.finetune import D3POConfig, MaPOConfig, PRDPConfig, d3po, lora, mapo, prdp
from steer.finetune.config import CONFIGS
from steer.finetune.d3po import d3po_loss, preference, sample_pairs
from steer.finetune.mapo import mapo_loss
from steer.finetune.prdp import group_pairs, prdp_loss
from steer.finetune.trainer import Trainer
from tests.test_finetune import PROMPTS, WIDE, Brightness, tiny_process
from tests.test_preference import _rows, write_parquet


def _sigmoid(z):
    return 1 / (1 + math.exp(-z))


# ---- the losses ---------------------------------------------------------------------------------------
def test_mapo_loss_is_the_references_compute_loss():
    # mapo utils.py: s(e) = ψe / (exp(ψe) − 1); log_odds = s(e_w) − s(e_l); ratio = logσ(T·log_odds);
    # loss = mean(e_w) − β·mean(ratio)
    e_w, e_l = torch.tensor([0.10, 0.50, 0.30]), torch.tensor([0.20, 0.40, 0.30])
    beta, psi, T = 0.1, 0.5, 1000
    s = [lambda e: psi * e / (math.exp(psi * e) - 1)][0]
    log_odds = [s(float(w)) - s(float(l)) for w, l in zip(e_w, e_l)]
    ratio = [math.log(_sigmoid(T * lo)) for lo in log_odds]
    expected = sum(map(float, e_w)) / 3 - beta * sum(ratio) / 3
    loss, margin, lo = mapo_loss(e_w, e_l, beta, psi, T)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert margin.tolist() == pytest.approx([-beta * r for r in ratio], rel=1e-4, abs=1e-7)
    assert (lo > 0).tolist() == [True, False, False]  # a smaller winner error scores higher; a tie is log 2
    assert float(margin[2]) == pytest.approx(beta * math.log(2), rel=1e-5)
    w = e_w.clone().requires_grad_(True)  # the SFT-like term: ∂/∂e_w holds +1/B beside the margin's part
    mapo_loss(w, e_l, 0.0, psi, T)[0].backward()
    assert w.grad.tolist() == pytest.approx([1 / 3] * 3)


def test_d3po_loss_is_the_references_clipped_dpo_on_each_step():
    # d3po train_d3po.py: ratio = clamp(exp(lp − lp_ref), 1 − ε, 1 + ε);
    # loss = −log σ(β·log(ratio_0)·h0 + β·log(ratio_1)·h1); compare(a, b) = [−1, 1] when a's reward is lower
    lp_a, ref_a = torch.tensor([0.02, -0.01, 0.30, 0.0]), torch.tensor([0.0, 0.0, 0.0, 0.0])
    lp_b, ref_b = torch.tensor([-0.03, 0.01, 0.0, 0.05]), torch.tensor([0.0, 0.0, 0.0, 0.0])
    r_a, r_b = torch.tensor([1.0, 0.0, 2.0, 0.5]), torch.tensor([0.0, 1.0, 1.0, 0.5])
    beta, eps = 0.1, 0.1
    c = preference(r_a, r_b)
    assert c.tolist() == [[1, -1], [-1, 1], [1, -1], [0, 0]]
    expected = []
    for k in range(4):
        ra = min(max(math.exp(float(lp_a[k] - ref_a[k])), 1 - eps), 1 + eps)
        rb = min(max(math.exp(float(lp_b[k] - ref_b[k])), 1 - eps), 1 + eps)
        expected.append(-math.log(_sigmoid(beta * math.log(ra) * float(c[k, 0]) + beta * math.log(rb) * float(c[k, 1]))))
    lp = lp_a.clone().requires_grad_(True)
    loss, inside = d3po_loss(lp, ref_a, lp_b, ref_b, c, beta, eps)
    assert float(loss.detach()) == pytest.approx(sum(expected) / 4, rel=1e-5)
    assert expected[3] == pytest.approx(math.log(2))  # a tie: log 2, no gradient
    loss.backward()
    assert lp.grad[2] == 0 and lp.grad[3] == 0 and lp.grad[0] < 0  # clipped (ratio e^0.3 > 1.1) and tie: none
    assert (inside > 0).tolist() == [True, True, True, False]


def test_prdp_loss_regresses_reward_differences_over_beta_with_the_proximal_max():
    # within each group every pair a < b; r̂ = log π_θ − log π_ref; r̂_clip = r̂_old + log clip(π_θ/π_old);
    # loss = mean max((T·Δr̂ − Δr/β)², (T·Δr̂_clip − Δr/β)²)
    a, b = group_pairs(6, 3)
    assert list(zip(a.tolist(), b.tolist())) == [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5)]
    lp = torch.tensor([0.010, -0.020, 0.000, 0.300, 0.001, -0.002])
    old = torch.tensor([0.000, -0.010, 0.002, 0.000, 0.000, 0.000])
    ref = torch.tensor([0.001, 0.000, -0.001, 0.002, 0.000, 0.001])
    r = torch.tensor([1.0, 0.2, 0.5, 0.9, 0.1, 0.4])
    beta, T, eps = 10.0, 4, 0.05
    expected = []
    for i, j in zip(a.tolist(), b.tolist()):
        hat = [float(lp[k] - ref[k]) for k in (i, j)]
        clip = [float(old[k] - ref[k]) + math.log(min(max(math.exp(float(lp[k] - old[k])), 1 - eps), 1 + eps))
                for k in (i, j)]
        target = float(r[i] - r[j]) / beta
        expected.append(max((T * (hat[0] - hat[1]) - target) ** 2, (T * (clip[0] - clip[1]) - target) ** 2))
    loss, predicted = prdp_loss(lp, old, ref, r, 3, beta, T, eps)
    assert float(loss) == pytest.approx(sum(expected) / 6, rel=1e-5)
    assert float(predicted[0]) == pytest.approx(T * float((lp[0] - ref[0]) - (lp[1] - ref[1])), rel=1e-5)
    # on the batch's first pass (θ = θ_old) the two terms coincide: plain RDP
    first, _ = prdp_loss(old, old, ref, r, 3, beta, T, eps)
    plain = [(T * float((old[i] - ref[i]) - (old[j] - ref[j])) - float(r[i] - r[j]) / beta) ** 2
             for i, j in zip(a.tolist(), b.tolist())]
    assert float(first) == pytest.approx(sum(plain) / 6, rel=1e-5)


def test_d3po_pairs_start_from_one_noise_and_differ_after(tmp_path):
    process = tiny_process(steps=3)
    trainer = Trainer(process, Brightness(), PROMPTS, D3POConfig(prompts_per_step=2, target_modules=WIDE),
                      tmp_path, method="d3po")
    batch = sample_pairs(trainer, torch.Generator().manual_seed(0))
    x = batch["states"]  # (S+1, 2P, ...)
    assert torch.equal(x[0][0::2], x[0][1::2]) and not torch.equal(x[0][0], x[0][2])
    assert not torch.allclose(x[-1][0::2], x[-1][1::2])  # η = 1: the two trajectories part
    assert batch["idx"][0::2] == batch["idx"][1::2] and batch["rewards"].shape == (4,)


# ---- tiny SD: the data sources, the saved LoRA in diffusers, the CLI ------------------------------------------
def _loads_into_diffusers(process, lora_dir):
    from steer.pipelines import from_pipe
    from tests.fixtures.tiny import build

    pipe = build("sd")
    pipe.load_lora_weights(str(lora_dir))
    loaded = from_pipe(pipe, num_inference_steps=process.num_steps, guidance_scale=1.0)
    x = torch.randn(1, *process.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = process.prepare(PROMPTS[:1])
    with torch.no_grad():
        return torch.allclose(loaded.denoise(x, 0, cond), process.denoise(x, 0, cond), atol=1e-5)


def _lora_moved(process):
    return any(v.abs().sum() > 0 for k, v in lora.lora_state_dict(process).items() if "lora_B" in k)


@pytest.mark.parametrize("name", ["mapo", "d3po", "prdp"])
def test_tiny_run_changes_the_lora_and_it_loads_into_diffusers(tmp_path, name):
    configs = {"mapo": MaPOConfig(source="dataset", dataset=str(write_parquet(tmp_path / "p.parquet", _rows(12))),
                                  max_steps=2, train_batch_size=2, learning_rate=1e-2, target_modules=WIDE),
               "d3po": D3POConfig(max_steps=2, prompts_per_step=2, learning_rate=1e-3, target_modules=WIDE),
               "prdp": PRDPConfig(max_steps=2, group_size=3, inner_epochs=2, learning_rate=1e-4, target_modules=WIDE)}
    process = tiny_process(steps=2)
    fn = {"mapo": mapo, "d3po": d3po, "prdp": prdp}[name]
    result = fn(process, Brightness(), [] if name == "mapo" else PROMPTS, configs[name], out_dir=tmp_path / "run")
    assert all(math.isfinite(m["loss"]) for m in result.metrics) and _lora_moved(process)
    assert _loads_into_diffusers(process, result.lora_dir)


def test_mapo_takes_verifier_labels_and_needs_no_reference_forward(tmp_path):
    cfg = MaPOConfig(source="verifier", threshold=0.5626, steer_method="best_of_n", steer_options={"n": 1},
                     samples_per_prompt=4, max_steps=1, train_batch_size=2, learning_rate=1e-2, target_modules=WIDE)
    process = tiny_process(steps=2)
    result = mapo(process, Brightness(), PROMPTS, cfg, out_dir=tmp_path)
    # 8 samples × 2 steps drawn, then one forward per row of the 2 pairs (DPO would take 8: a reference too)
    assert result.metrics[0]["nfe"] == 8 * 2 + 4 and result.metrics[0]["reference_error"] is None
    assert _lora_moved(process)


def test_cli_lists_the_methods_and_presets_and_configs_name_the_fix():
    out = CliRunner().invoke(app, ["finetune", "--help"], terminal_width=200).output
    assert all(name in out for name in ("mapo", "d3po", "prdp"))
    assert {"mapo", "d3po", "prdp"} <= set(CONFIGS)
    for cls, bad, match in ((MaPOConfig, {"snr_value": 0}, "snr_value"), (D3POConfig, {"clip_range": 1.5}, "clip_range"),
                            (PRDPConfig, {"group_size": 1}, "group_size"), (PRDPConfig, {"log_prob_reduce": "max"},
                                                                            "log_prob_reduce")):
        with pytest.raises(ValueError, match=match):
            cls(**bad)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.fixtures.tiny import build

    path = tmp_path_factory.mktemp("tiny-sd")
    build("sd").save_pretrained(path)
    return path


@pytest.mark.parametrize("method, extra", [
    ("mapo", ["--dataset", "DATA", "--set", "train_batch_size=2"]),
    ("d3po", ["--reward", "tests.test_finetune:Brightness", "--prompts", "PROMPTS"]),
    ("prdp", ["--reward", "tests.test_finetune:Brightness", "--prompts", "PROMPTS", "--set", "group_size=2"]),
])
def test_steer_finetune_runs_each_method(tmp_path, model_dir, method, extra):
    import json

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    data = write_parquet(tmp_path / "pairs.parquet", _rows(8, ties=2)) if method == "mapo" else None
    extra = [str(data) if a == "DATA" else str(tmp_path / "prompts.txt") if a == "PROMPTS" else a for a in extra]
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["finetune", "--method", method, "--model", str(model_dir), "--out", str(out),
                                      "--steps", "2", "--guidance", "1", "--max-steps", "1", "--lora-rank", "2", *extra])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["method"] == method
    assert (out / "lora" / "pytorch_lora_weights.safetensors").exists()


@pytest.mark.parametrize("name", ["d3po", "prdp"])
def test_resume_mid_batch_is_bitwise_equal(tmp_path, name):
    from tests.test_finetune import Interrupt, _stop_at

    fn, cfg = {"d3po": (d3po, D3POConfig(max_steps=3, checkpoint_every=1, learning_rate=1e-3, target_modules=WIDE)),
               "prdp": (prdp, PRDPConfig(max_steps=4, checkpoint_every=1, group_size=2, inner_epochs=2,
                                         clip_range=0.1, learning_rate=1e-4, target_modules=WIDE))}[name]
    straight = tiny_process(steps=2)
    fn(straight, Brightness(), PROMPTS, cfg, out_dir=tmp_path / "a")
    with pytest.raises(Interrupt):  # prdp: step 4 reuses the batch drawn at step 3, restored from the checkpoint
        fn(tiny_process(steps=2), Brightness(), PROMPTS, cfg, out_dir=tmp_path / "b",
           callback=_stop_at(3 if name == "prdp" else 2))
    resumed = tiny_process(steps=2)
    fn(resumed, Brightness(), PROMPTS, cfg, out_dir=tmp_path / "b", resume=True)
    a, b = lora.lora_state_dict(straight), lora.lora_state_dict(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_flow_models_train_on_the_flow_sde(tmp_path):
    # SD3 (rectified flow): the pairs / groups come from the Flow-GRPO SDE (a = 0.7), the log-probs are its kernel's
    targets = ("to_q", "to_k", "to_v", "to_out.0")
    for name, fn, cfg in (("d3po", d3po, D3POConfig(max_steps=1, target_modules=targets, learning_rate=1e-3)),
                          ("prdp", prdp, PRDPConfig(max_steps=1, group_size=2, target_modules=targets))):
        process = tiny_process(family="sd3", steps=2)
        result = fn(process, Brightness(), PROMPTS, cfg, out_dir=tmp_path / name)
        assert math.isfinite(result.metrics[0]["loss"]) and _lora_moved(process), name
