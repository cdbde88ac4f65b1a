"""Diffusion-DPO and Diffusion-KTO: the losses against formulas re-derived from the papers, the frozen
reference (adapter disabled, no gradient), the three data sources, the grey world moved by each
method (with the negated control), bitwise resume, LoRA loading and bad input."""
from __future__ import annotations

import io as _io
import json
import math
from types import SimpleNamespace

import pytest
import torch

from steer.budget import Trace
from steer.finetune import DPOConfig, KTOConfig, checkpoint, dpo, kto, lora
from steer.finetune.denoising import denoising_errors
from steer.finetune.dpo import dpo_loss
from steer.finetune.kto import kto_loss
from tests.fixtures import grey
from tests.test_finetune import PIXEL_WIDE, PROMPTS, WIDE, Brightness, Darkness, _stop_at, Interrupt, tiny_process


# ---- the losses ---------------------------------------------------------------------------------------
def test_dpo_loss_is_the_papers_eq_14_with_the_elbo_log_ratios():
    # log π_θ(x)/π_ref(x) ≈ −(‖y − f_θ‖² − ‖y − f_ref‖²) per step (T and ω folded into β);
    # DPO: −log σ(β/2 · (log-ratio of the winner − log-ratio of the loser)).
    m_w, m_l = torch.tensor([0.10, 0.30, 0.20]), torch.tensor([0.20, 0.10, 0.20])
    r_w, r_l = torch.tensor([0.15, 0.20, 0.25]), torch.tensor([0.15, 0.20, 0.20])
    beta = 40.0
    expected = []
    for k in range(3):
        ratio_w, ratio_l = -(m_w[k] - r_w[k]), -(m_l[k] - r_l[k])
        z = beta / 2 * (ratio_w - ratio_l)
        expected.append(math.log(1 + math.exp(-float(z))))  # −log σ(z)
    loss, inside = dpo_loss(m_w, m_l, r_w, r_l, beta)
    assert float(loss) == pytest.approx(sum(expected) / 3, rel=1e-6)
    assert (inside > 0).tolist() == [True, False, True]
    assert float(dpo_loss(r_w, r_l, r_w, r_l, beta)[0]) == pytest.approx(math.log(2))  # model = reference


def test_kto_loss_is_the_sigmoid_utility_with_a_clamped_batch_reference_point():
    model = torch.tensor([0.10, 0.40, 0.20, 0.30])
    ref = torch.tensor([0.20, 0.30, 0.20, 0.35])
    desirable = torch.tensor([True, False, True, False])
    beta, lam_d, lam_u = 10.0, 1.0, 2.0
    g = [float(r - m) for m, r in zip(model, ref)]  # 0.1, −0.1, 0, 0.05
    z = max(0.0, sum(g) / 4)
    expected = []
    for gk, d in zip(g, desirable.tolist()):
        s = 1 if d else -1
        expected.append((lam_d if d else lam_u) * (1 - 1 / (1 + math.exp(-s * beta * (gk - z)))))
    loss, zt, margin = kto_loss(model, ref, desirable, beta, lam_d, lam_u)
    assert float(zt) == pytest.approx(z) and float(loss) == pytest.approx(sum(expected) / 4, rel=1e-6)
    # a negative mean log-ratio is clamped to a reference point of 0
    _, z0, _ = kto_loss(model + 1, ref, desirable, beta, lam_d, lam_u)
    assert float(z0) == 0.0


def _errors_of(process, x0, cond, seed):
    holder = SimpleNamespace(process=process, trace=Trace(num_prompts=1), config=SimpleNamespace(loss_space="model", guided=False))
    return denoising_errors(holder, x0, cond, torch.Generator().manual_seed(seed)), holder.trace


def test_reference_is_the_base_model_without_a_second_copy_and_without_gradient():
    trained, fresh = tiny_process(steps=3), tiny_process(steps=3)
    for p in (trained, fresh):
        lora.attach_lora(lora.pipeline_of(p), 4, target_modules=WIDE, init_seed=0)
    with torch.no_grad():
        for name, param in lora.denoiser(lora.pipeline_of(trained)).named_parameters():
            if "lora_B" in name:
                param.add_(0.05 * torch.randn_like(param))  # a LoRA that moved
    x0 = torch.randn(3, *trained.latent_shape, generator=torch.Generator().manual_seed(1))
    cond = trained.prepare(PROMPTS + PROMPTS[:1])
    (model, ref), trace = _errors_of(trained, x0, cond, seed=5)
    (base, _), _ = _errors_of(fresh, x0, cond, seed=5)  # zero-initialized LoRA: the base model
    assert torch.allclose(ref, base, atol=1e-6) and not torch.allclose(model, ref)
    assert model.requires_grad and not ref.requires_grad
    assert trace.nfe == 6  # model and reference, 3 samples each
    params = {id(p) for p in lora.denoiser(lora.pipeline_of(trained)).parameters()}
    assert len(params) == len(list(lora.denoiser(lora.pipeline_of(trained)).parameters()))  # one denoiser


# ---- the grey world: each method moves fresh samples toward what its data prefer -------------------------
@pytest.fixture(scope="module")
def grey_state():
    return grey.train_state()


def test_dpo_on_steering_pairs_moves_fresh_samples_both_ways(tmp_path, grey_state):
    # pairs: best-of-8 (DDIM η = 0) against the base sample, labelled by the reward; measured +0.040 / −0.055
    base = grey.brightness(grey.process(grey_state), 0.0)
    moved = {}
    for reward in (Brightness(), Darkness()):
        process = grey.process(grey_state)
        cfg = DPOConfig(steer_method="best_of_n", steer_options={"n": 8}, samples_per_prompt=16, max_steps=40,
                        learning_rate=3e-3, prompts_per_step=1, train_batch_size=8, target_modules=PIXEL_WIDE,
                        beta=500.0, loss_space="x0")
        result = dpo(process, reward, ["grey"], cfg, out_dir=tmp_path / reward.name)
        moved[reward.name] = grey.brightness(process, 0.0) - base
        assert result.metrics[-1]["implicit_accuracy"] is not None
    print(f"dpo: base {base:.4f}, moved {moved}")
    assert moved["brightness"] > 0.015 and moved["darkness"] < -0.015, moved


def test_kto_on_verifier_labels_moves_fresh_samples_both_ways(tmp_path, grey_state):
    # the model's own samples, desirable when brighter (darker) than the base mean. 80 steps: at 40 the darkness
    # run moved +0.001 on one torch thread (−0.013 on two; the grey world's numerics differ by thread count, and
    # a pytest-xdist worker's count depends on what ran before it); at 80, +0.046 / −0.027 (1 thread) and
    # +0.016 / −0.043 (2 threads)
    base = grey.brightness(grey.process(grey_state), 0.0)
    moved = {}
    for reward, threshold in ((Brightness(), base), (Darkness(), -base)):
        process = grey.process(grey_state)
        cfg = KTOConfig(source="verifier", threshold=threshold, steer_method="best_of_n", steer_options={"n": 1},
                        samples_per_prompt=32, max_steps=80, learning_rate=3e-3, prompts_per_step=1,
                        train_batch_size=8, target_modules=PIXEL_WIDE, beta=500.0, loss_space="x0")
        result = kto(process, reward, ["grey"], cfg, out_dir=tmp_path / reward.name)
        moved[reward.name] = grey.brightness(process, 0.0) - base
        assert 0 < result.metrics[0]["desirable_share"] < 1
    print(f"kto: base {base:.4f}, moved {moved}")
    assert moved["brightness"] > 0.01 and moved["darkness"] < -0.005, moved


# ---- a Pick-a-Pic-layout dataset ---------------------------------------------------------------------------
def _png(color, size=40) -> bytes:
    from PIL import Image

    buf = _io.BytesIO()
    Image.new("RGB", (size, size + 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _rows(n=12, ties=3):
    rows = []
    for k in range(n):
        label = 0.5 if k < ties else float(k % 2)
        rows.append({"caption": PROMPTS[k % 2], "jpg_0": _png((200, 40 + k, 40)), "jpg_1": _png((40, 40, 200 - k)),
                     "label_0": label})
    return rows


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, row in enumerate(rows):
        entry = dict(row)
        for col in ("jpg_0", "jpg_1"):
            if isinstance(row[col], bytes):
                (folder / f"{k}_{col}.png").write_bytes(row[col])
                entry[col] = f"{k}_{col}.png"
        lines.append(json.dumps(entry))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "pairs.jsonl"


def test_dpo_streams_a_parquet_dataset_decoding_only_the_batch(tmp_path, monkeypatch):
    from PIL import Image

    path = write_parquet(tmp_path / "pairs.parquet", _rows(40, ties=4))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    process = tiny_process(steps=3)
    cfg = DPOConfig(source="dataset", dataset=str(path), max_steps=3, train_batch_size=2, learning_rate=1e-2,
                    beta=500.0, target_modules=WIDE, shuffle_buffer=8)
    result = dpo(process, None, [], cfg, out_dir=tmp_path / "run")
    assert len(opened) <= 2 * 2 * 3 + 2 * 4  # the batches' images (and at most the ties before them), not 80
    assert all(math.isfinite(m["loss"]) for m in result.metrics)
    assert any(v.abs().sum() > 0 for k, v in lora.lora_state_dict(process).items() if "lora_B" in k)


def test_kto_reads_a_jsonl_dataset_with_image_files_and_resumes_bitwise(tmp_path):
    path = write_jsonl(tmp_path / "data", _rows(10, ties=2))
    cfg = KTOConfig(source="dataset", dataset=str(path), max_steps=5, checkpoint_every=1, train_batch_size=3,
                    learning_rate=1e-2, beta=500.0, target_modules=WIDE, shuffle_buffer=4)
    straight = tiny_process(steps=2)
    kto(straight, None, [], cfg, out_dir=tmp_path / "a")  # 5 steps × 2 pairs pass the end of the 8 pairs: 2 epochs
    with pytest.raises(Interrupt):
        kto(tiny_process(steps=2), None, [], cfg, out_dir=tmp_path / "b", callback=_stop_at(3))
    resumed = tiny_process(steps=2)
    kto(resumed, None, [], cfg, out_dir=tmp_path / "b", resume=True)
    a, b = lora.lora_state_dict(straight), lora.lora_state_dict(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = checkpoint.load(checkpoint.latest(tmp_path / "a" / "checkpoints"))["extra"]["dataset_stream"]
    assert state["epoch"] == 1 and state["ties"] >= 2


def test_dpo_on_policy_rounds_resume_bitwise_and_the_lora_loads_into_diffusers(tmp_path):
    cfg = DPOConfig(steer_method="best_of_n", steer_options={"n": 3}, regenerate_every=2, max_steps=4,
                    checkpoint_every=1, train_batch_size=2, learning_rate=1e-2, beta=500.0, target_modules=WIDE)
    straight = tiny_process(steps=2)
    result = dpo(straight, Brightness(), PROMPTS, cfg, out_dir=tmp_path / "a")
    assert result.metrics[0]["reward_mean"] != result.metrics[-1]["reward_mean"]  # round 2 re-drew the pairs
    with pytest.raises(Interrupt):
        dpo(tiny_process(steps=2), Brightness(), PROMPTS, cfg, out_dir=tmp_path / "b", callback=_stop_at(3))
    resumed = tiny_process(steps=2)
    dpo(resumed, Brightness(), PROMPTS, cfg, out_dir=tmp_path / "b", resume=True)
    a, b = lora.lora_state_dict(straight), lora.lora_state_dict(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    from tests.fixtures.tiny import build

    pipe = build("sd")
    pipe.load_lora_weights(str(result.lora_dir))
    x = torch.randn(1, *straight.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = straight.prepare(PROMPTS[:1])
    from steer.pipelines import from_pipe

    loaded = from_pipe(pipe, num_inference_steps=2, guidance_scale=1.0)
    with torch.no_grad():
        assert torch.allclose(loaded.denoise(x, 0, cond), straight.denoise(x, 0, cond), atol=1e-5)


# ---- bad input: one line naming the fix -----------------------------------------------------------------
def _bad(tmp_path, rows, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_parquet(tmp_path / "bad.parquet", rows)
    cfg = DPOConfig(source="dataset", dataset=str(path), max_steps=1, train_batch_size=2, **kw)
    with pytest.raises(ValueError) as e:
        dpo(tiny_process(steps=2), None, [], cfg, out_dir=tmp_path / "run")
    return str(e.value)


def test_dataset_errors_name_the_fix(tmp_path):
    rows = _rows(4, ties=0)
    missing = [{k: v for k, v in r.items() if k != "label_0"} for r in rows]
    assert "lacks the column(s) label_0" in _bad(tmp_path / "1", missing)
    broken = [dict(r, jpg_1=b"not an image") for r in rows]
    assert "unreadable" in _bad(tmp_path / "3", broken)
    empty = [dict(r, jpg_1=b"") for r in rows]
    assert "has no jpg_1 image" in _bad(tmp_path / "4", empty)
    odd = [dict(r, label_0=2.0) for r in rows]
    assert "label_0 must be 1" in _bad(tmp_path / "5", odd)
    with pytest.raises(ValueError, match="does not exist"):
        dpo(tiny_process(steps=2), None, [], DPOConfig(source="dataset", dataset=str(tmp_path / "nope.parquet")),
            out_dir=tmp_path / "6")
    for msg in (_bad(tmp_path / "1", missing), _bad(tmp_path / "3", broken)):
        assert "\n" not in msg


def test_all_ties_and_unencodable_pipelines_are_one_line_errors(tmp_path, grey_state):
    from steer.finetune import preference_dataset

    path = write_parquet(tmp_path / "ties.parquet", _rows(4, ties=4))  # every row a tie (label_0 = 0.5)
    trainer = SimpleNamespace(config=DPOConfig(source="dataset", dataset=str(path)), rank=0, world=1)
    with pytest.raises(ValueError, match="are ties.*every pair needs a preferred image"):
        preference_dataset.PairStream(trainer).next_pair(max_ties=12)
    with pytest.raises(ValueError, match="cannot encode images"):  # a pixel-space DDPM has no VAE
        dpo(grey.process(grey_state), None, [], DPOConfig(source="dataset", dataset=str(write_parquet(
            tmp_path / "ok.parquet", _rows(4, ties=0))), max_steps=1), out_dir=tmp_path / "px")


class Constant(Brightness):
    name = "constant"

    def score(self, images, prompts):
        return torch.zeros(images.shape[0])


def test_online_pairs_with_equal_rewards_and_bad_settings_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no preference pairs.*use --method kto"):
        dpo(tiny_process(steps=2), Constant(), PROMPTS, DPOConfig(steer_method="best_of_n", steer_options={"n": 2},
                                                                 max_steps=1), out_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="draws samples of the prompts"):
        kto(tiny_process(steps=2), Brightness(), [], KTOConfig(source="verifier"), out_dir=tmp_path / "b")
    for bad, match in ((dict(beta=0.0), "beta must be a positive"), (dict(beta=-1.0), "beta must be a positive"),
                       (dict(source="disk"), "source must be"), (dict(source="dataset"), "needs dataset=PATH"),
                       (dict(loser="worst"), "samples_per_prompt >= 2"), (dict(regenerate_every=-1), ">= 0")):
        with pytest.raises(ValueError, match=match):
            DPOConfig(**bad)
    with pytest.raises(ValueError, match="desirable_fraction"):
        KTOConfig(desirable_fraction=1.0)


# ---- Process.encode: images from disk into the chain's latent space ------------------------------------
@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "pixart"])
def test_encode_gives_latents_of_the_process_shape(family):
    process = tiny_process(family, steps=2)
    images = torch.rand(2, 3, process.height, process.width, generator=torch.Generator().manual_seed(0))
    x0 = process.encode(images)  # the posterior mode without a generator
    assert x0.shape == (2, *process.latent_shape) and torch.isfinite(x0).all()
    config = process.vae.config
    z = process.vae.encode(images * 2 - 1).latent_dist.mode()
    shift = getattr(config, "shift_factor", None) or 0.0
    if family != "sdxl":  # decode divides by scaling_factor (and adds shift_factor): encode is its inverse
        assert torch.allclose(x0, (z - shift) * config.scaling_factor, atol=1e-6)
    sampled = process.encode(images, torch.Generator().manual_seed(1))
    assert not torch.equal(sampled, x0)  # a posterior sample, reproducible from the generator
    assert torch.equal(sampled, process.encode(images, torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="resize them first"):
        process.encode(torch.rand(1, 3, process.height * 2, process.width * 2))


def test_sdxl_latent_scaling_round_trips_with_latents_mean_and_std():
    process = tiny_process("sdxl", steps=2)
    channels = process.latent_shape[0]
    process.vae.register_to_config(latents_mean=[0.1 * c for c in range(channels)],
                                   latents_std=[1.0 + 0.5 * c for c in range(channels)])
    z = torch.randn(2, *process.latent_shape)
    assert torch.allclose(process._unscale(process._scale(z)), z, atol=1e-5)


def test_families_without_an_encoder_refuse_in_one_line():
    process = tiny_process("flux", steps=2)
    with pytest.raises(ValueError, match="cannot encode images into latents; train from samples instead"):
        process.encode(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_models_take_the_velocity_as_the_target(family):
    # rectified flow: x_i = (1 − σ) x0 + σ ε and the target is the velocity ε − x0 (kernels.training_target)
    from steer import kernels

    process = tiny_process(family, steps=3)
    lora.attach_lora(lora.pipeline_of(process), 4, init_seed=0)  # zero-initialized: model = reference
    x0 = torch.randn(2, *process.latent_shape, generator=torch.Generator().manual_seed(2))
    cond = process.prepare(PROMPTS)
    (model, ref), _ = _errors_of(process, x0, cond, seed=7)
    g = torch.Generator().manual_seed(7)  # the draws of denoising_errors: the step, then the noise
    i = int(torch.randint(process.num_steps, (1,), generator=g))
    noise = torch.randn(x0.shape, generator=g)
    assert process.schedule.kind == "flow"
    sigma = process.schedule.sigmas[i]
    x_i = kernels.add_noise(process.schedule, i, x0, noise)
    assert torch.allclose(x_i, (1 - sigma) * x0 + sigma * noise, atol=1e-6)
    from steer.finetune.denoising import conditional

    with torch.no_grad():
        expected = (process.denoise(x_i, i, conditional(cond)).float() - (noise - x0)).pow(2).flatten(1).mean(1)
    assert torch.allclose(model.detach(), expected, atol=1e-5) and torch.allclose(ref, expected, atol=1e-5)
