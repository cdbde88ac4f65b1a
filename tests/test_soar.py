"""SOAR (steer.finetune.soar): the re-noising and correction target re-derived from the paper / reference code
on small tensors, the loss pinned to the reference's formula on a flow model, and an end-to-end run."""
import pytest
import torch

from steer import chain, kernels
from steer.finetune import SoarConfig, soar
from steer.finetune.soar import soar_loss
from steer.finetune.trainer import Trainer
from steer.types import Schedule
from tests.fixtures import grey
from tests.test_finetune import PIXEL_WIDE, PROMPTS, WIDE, Brightness, tiny_process

SCHEDULES = {
    "flow": Schedule(kind="flow", timesteps=torch.tensor([900.0, 600.0, 300.0]), prediction_type="flow",
                     sigmas=torch.tensor([0.9, 0.6, 0.3, 0.0])),
    "epsilon": Schedule(kind="diffusion", timesteps=torch.tensor([900, 500, 100]), prediction_type="epsilon",
                        alphas_cumprod=torch.tensor([0.05, 0.4, 0.9, 1.0])),
    "v_prediction": Schedule(kind="diffusion", timesteps=torch.tensor([900, 500, 100]), prediction_type="v_prediction",
                             alphas_cumprod=torch.tensor([0.05, 0.4, 0.9, 0.999])),
}


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_renoising_toward_the_same_endpoint_stays_on_the_forward_ray(kind):
    s = SCHEDULES[kind]
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    for j in range(1, 4):
        on_ray = kernels.add_noise(s, j, x0, eps)
        for i in range(j + 1):
            torch.testing.assert_close(kernels.renoise_along(s, on_ray, j, i, eps), kernels.add_noise(s, i, x0, eps))
    off = kernels.add_noise(s, 2, x0, eps) + 0.1  # an off-trajectory state: the offset shrinks by a = ... toward ε
    got = kernels.renoise_along(s, off, 2, 0, eps) - kernels.add_noise(s, 0, x0, eps)
    a = (s.alphas_cumprod[0] / s.alphas_cumprod[2]) ** 0.5 if kind != "flow" else (1 - 0.9) / (1 - 0.3)
    torch.testing.assert_close(got, torch.full_like(got, 0.1 * float(a)))


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_correction_target_points_x0_hat_at_the_clean_target(kind):
    """The output whose x̂0 is x0 at any state z: flow (z − x0)/σ (the reference's v_corr)."""
    s = SCHEDULES[kind]
    g = torch.Generator().manual_seed(1)
    x0, z = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    for k in range(3):
        target = kernels.training_target(s, k, x0, kernels.implied_noise(s, k, z, x0))
        torch.testing.assert_close(kernels.to_prediction(s, k, z, target).x0, x0, rtol=1e-4, atol=1e-4)
        if kind == "flow":
            torch.testing.assert_close(target, (z - x0) / s.sigmas[k])


def test_soar_loss_is_the_references_formula_on_a_flow_model(tmp_path):
    """(Σ‖v(z_i) − (ε − x0)‖² + λ·Σ_k‖v(z_k) − (z_k − x0)/σ_k‖²) / (B + λ·B·K) with z_k = (1−α)·z'_{i+1} + α·ε,
    α = (σ_k − σ_{i+1}) / (1 − σ_{i+1}) and z'_{i+1} the guided Euler step (HY-SOAR algorithm.py)."""
    process = tiny_process("sd3", steps=3, guidance=2.0)
    cfg = SoarConfig(aux_points=2, aux_weight=0.5, max_steps=1, steer_method="best_of_n")
    trainer = Trainer(process, Brightness(), PROMPTS, cfg, tmp_path, method="soar")
    x0 = process.init_noise(2, torch.Generator().manual_seed(5))
    cond = trainer.cond([0, 1])
    got = soar_loss(trainer, x0, cond, torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)  # the same draws, in the same order
    sig, S = process.schedule.sigmas, process.num_steps
    i = int(torch.randint(S, (1,), generator=g))
    eps = torch.randn(x0.shape, generator=g)
    uncond = type(cond)(prompts=cond.prompts, tensors={k: v for k, v in cond.tensors.items()
                                                        if not k.startswith("negative_")}, guidance_scale=1.0)
    with torch.no_grad():
        z_i = (1 - sig[i]) * x0 + sig[i] * eps
        main = ((process.denoise(z_i, i, uncond) - (eps - x0)) ** 2).flatten(1).mean(1)
        v_cfg = process.denoise(z_i, i, cond)
        z_next = z_i + v_cfg * (sig[i + 1] - sig[i])
        total, count = main.sum(), 2.0
        for _ in range(2):
            k = int(torch.randint(min(i + 1, S - 1) + 1, (1,), generator=g))
            alpha = (sig[k] - sig[i + 1]) / (1 - sig[i + 1])
            z_k = (1 - alpha) * z_next + alpha * eps
            v_corr = (z_k - x0) / sig[k]
            aux = ((process.denoise(z_k, k, uncond) - v_corr) ** 2).flatten(1).mean(1)
            total, count = total + 0.5 * aux.sum(), count + 0.5 * 2
    torch.testing.assert_close(got.detach(), total / count, rtol=1e-5, atol=1e-6)


def test_soar_moves_fresh_samples_toward_the_steered_ones(tmp_path):
    state = grey.train_state()
    before = grey.brightness(grey.process(state), eta=0.0)
    process = grey.process(state)
    cfg = SoarConfig(steer_method="best_of_n", steer_options={"n": 8}, samples_per_prompt=16, max_steps=30,
                     learning_rate=1e-2, prompts_per_step=1, train_batch_size=8, target_modules=PIXEL_WIDE,
                     aux_points=2, loss_space="x0")
    result = soar(process, Brightness(), ["grey"], cfg, out_dir=tmp_path)
    after = grey.brightness(process, eta=0.0)
    assert after > before + 0.015, (before, after)
    assert result.metrics[-1]["nfe"] > result.metrics[0]["nfe"]


def test_rollout_guidance_without_guidance_in_the_chain_names_the_fix(tmp_path):
    cfg = SoarConfig(rollout_guidance=4.5, steer_method="best_of_n", max_steps=1, target_modules=WIDE)
    with pytest.raises(ValueError, match="guidance_scale > 1"):
        soar(tiny_process(steps=2, guidance=1.0), Brightness(), PROMPTS, cfg, out_dir=tmp_path)
