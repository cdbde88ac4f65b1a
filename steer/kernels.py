"""Stateless Gaussian transitions of the sampling chain, one function per family.

Every kernel returns the Gaussian ``p(x_next | x_t) = N(mean, std²·I)``; ``sample`` draws from it
with an explicit generator and ``log_prob`` scores a draw. The diffusers scheduler supplies only the
schedule (``steer.types.Schedule``); its ``step()`` is not used because multistep schedulers keep
hidden state that breaks branching. Tests pin these kernels to ``DDIMScheduler.step`` and
``FlowMatchEulerDiscreteScheduler.step`` at eta = 0.

Notation (code name -> paper):

=================  ==============================================================
``alpha_t``        ᾱ_t, cumulative signal level at the current step (DDIM, Song et al. 2021)
``alpha_prev``     ᾱ_{t-1}, at the step the transition lands on
``eta``            η: 0 = deterministic DDIM, 1 = DDPM-like ancestral variance (eq. 16)
``sigma``          flow time t = σ with x_σ = (1-σ)·x0 + σ·ε (rectified flow)
``a``              Flow-GRPO noise level: σ_t = a·sqrt(t/(1-t)) (Liu et al. 2025, eq. 8); CPS: std =
                   σ_next·sin(a·π/2); DanceGRPO: σ_t = a (constant)
``pred.eps``       ε̂ (diffusion) or the implied noise x̂1 (flow)
``pred.output``    the model output: ε̂, v̂ or x̂0 (diffusion), velocity v̂ = ε − x0 (flow)
``alpha_next``     ᾱ_{t+1}, the noisier level an inverse (DDIM inversion) step lands on
=================  ==============================================================

Log-probs are computed in float32. ``log_prob(..., reduce="mean")`` averages the per-dimension
Gaussian log-density over all non-batch dimensions (as DDPO and Flow-GRPO do, which keeps the PPO
ratio well scaled); ``reduce="sum"`` gives the exact log-density of the whole latent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from steer.types import Prediction, Schedule

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class Gaussian:
    """N(mean, std²·I); ``std`` is a scalar tensor or broadcasts against ``mean``. std == 0 is a
    deterministic (ODE) step."""

    mean: Tensor  # (B, ...)
    std: Tensor  # () or broadcastable to mean

    @property
    def deterministic(self) -> bool:
        return bool((torch.as_tensor(self.std) == 0).all())


def to_prediction(schedule: Schedule, i: int, x: Tensor, output: Tensor) -> Prediction:
    """Turn a raw (guided) model output at step ``i`` into x̂0 and ε̂, in float32."""
    x, output = x.float(), output.float()
    if schedule.kind == "flow":
        sigma = schedule.sigmas[i]
        return Prediction(output=output, x0=x - sigma * output, eps=x + (1 - sigma) * output)
    a = schedule.alphas_cumprod[i]
    b = 1 - a
    kind = schedule.prediction_type
    if kind == "epsilon":
        x0, eps = (x - b**0.5 * output) / a**0.5, output
    elif kind == "v_prediction":
        x0, eps = a**0.5 * x - b**0.5 * output, a**0.5 * output + b**0.5 * x
    elif kind == "sample":
        x0, eps = output, (x - a**0.5 * output) / b**0.5
    else:
        raise ValueError(f"unsupported prediction_type {kind!r}: use epsilon, v_prediction or sample")
    if schedule.clip_sample is not None:  # like DDIMScheduler: clip x̂0 only, ε̂ stays the unclipped one
        x0 = x0.clamp(-schedule.clip_sample, schedule.clip_sample)
    return Prediction(output=output, x0=x0, eps=eps)


def ddim(x: Tensor, pred: Prediction, alpha_t: Tensor, alpha_prev: Tensor, eta: float = 0.0) -> Gaussian:
    """DDIM transition with stochasticity η (Song et al. 2021, eqs. 12 and 16); η = 1 is DDPM-like.

    mean = sqrt(ᾱ_{t-1})·x̂0 + sqrt(1 − ᾱ_{t-1} − σ_t²)·ε̂,
    σ_t = η·sqrt((1 − ᾱ_{t-1})/(1 − ᾱ_t))·sqrt(1 − ᾱ_t/ᾱ_{t-1}).
    """
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance**0.5
    direction = (1 - alpha_prev - std**2) ** 0.5 * pred.eps
    mean = alpha_prev**0.5 * pred.x0 + direction
    return Gaussian(mean=mean, std=torch.as_tensor(std, dtype=torch.float32))


def flow_euler(x: Tensor, pred: Prediction, sigma: Tensor, sigma_next: Tensor) -> Gaussian:
    """Euler step of the rectified-flow ODE dx = v dσ: x_next = x + (σ_next − σ)·v̂."""
    mean = x.float() + (sigma_next - sigma) * pred.output
    return Gaussian(mean=mean, std=torch.zeros((), dtype=torch.float32))


def flow_sde(
    x: Tensor, pred: Prediction, sigma: Tensor, sigma_next: Tensor, a: float, sigma_cap: Tensor
) -> Gaussian:
    """Euler–Maruyama step of the Flow-GRPO SDE with the same marginals as the flow ODE
    (Liu et al. 2025, "Flow-GRPO", eq. 9):

    x_next = x + [v̂ + σ_t²/(2t)·(x + (1−t)·v̂)]·Δt + σ_t·sqrt(−Δt)·ε,  σ_t = a·sqrt(t/(1−t)),

    with t = σ and Δt = σ_next − σ < 0. At t = 1, t/(1−t) is infinite; like the reference
    implementation we evaluate it with ``sigma_cap`` (the largest σ below 1) in the denominator.
    """
    x = x.float()
    denom = 1 - torch.where(sigma >= 1, sigma_cap, sigma)
    sig_t = a * (sigma / denom) ** 0.5
    dt = sigma_next - sigma
    drift = pred.output + sig_t**2 / (2 * sigma) * (x + (1 - sigma) * pred.output)
    mean = x + drift * dt
    return Gaussian(mean=mean, std=(sig_t * (-dt) ** 0.5).float())


def dance_sde(x: Tensor, pred: Prediction, sigma: Tensor, sigma_next: Tensor, eta: float) -> Gaussian:
    """Euler–Maruyama step of DanceGRPO's SDE (Xue et al. 2025, ``fastvideo/train_grpo_flux.py``
    ``flux_step`` with ``sde_solver=True``): the Flow-GRPO drift with a constant σ_t = η,

    mean = x + Δt·v̂ − ½η²·s(x)·Δt,  s(x) = −(x − (1−t)·x̂0)/t²,  std = η·sqrt(−Δt),

    which equals x + [v̂ + η²/(2t)·(x + (1−t)·v̂)]·Δt (x̂0 = x − t·v̂)."""
    x = x.float()
    dt = sigma_next - sigma
    score = -(x - (1 - sigma) * pred.x0) / sigma**2
    mean = x + dt * pred.output - 0.5 * eta**2 * score * dt
    return Gaussian(mean=mean, std=(eta * (-dt) ** 0.5).float())


def sage_sde(x: Tensor, pred: Prediction, sigma: Tensor, sigma_next: Tensor, eta: float) -> Gaussian:
    """SAGE-GRPO's "precise manifold-aware" SDE step (Zheng et al. 2026, arXiv 2603.21872;
    Tencent-Hunyuan/SAGE-GRPO ``FlowMatchDiscreteScheduler.sde_step_with_logprob(sde_type="sage_grpo",
    sde_solver=True)``): the DanceGRPO step with its variance η²·|Δt| replaced by the integral of the noise
    over the step,

    std² = η²·(log((1 − σ_next)/(1 − min(σ, 1 − 3e-3))) − (σ − σ_next)),
    mean = x + Δt·v̂ + ½·std²·s(x),  s(x) = −(x − (1−σ)·x̂0)/σ²."""
    x = x.float()
    dt = sigma_next - sigma
    var = eta**2 * (torch.log((1 - sigma_next) / (1 - sigma.clamp(max=1 - 3e-3))) - (sigma - sigma_next))
    score = -(x - (1 - sigma) * pred.x0) / sigma**2
    mean = x + dt * pred.output + 0.5 * var * score
    return Gaussian(mean=mean, std=var.clamp_min(0).sqrt().float())


def flow_cps(x: Tensor, pred: Prediction, sigma_next: Tensor, a: float) -> Gaussian:
    """Coefficients-preserving sampling (Wang et al. 2025, "Coefficients-Preserving Sampling for RL with
    Flow Matching"; flow_grpo ``sde_step_with_logprob(sde_type="cps")``): the next state keeps the
    forward process' coefficients, (1 − σ_next)·x̂0 plus noise of total level σ_next, split between the
    predicted noise x̂1 and fresh noise:

    mean = (1 − σ_next)·x̂0 + sqrt(σ_next² − std²)·x̂1,  std = σ_next·sin(a·π/2).

    At the last step (σ_next = 0) it is deterministic and lands on x̂0."""
    std = sigma_next * math.sin(a * math.pi / 2)
    mean = (1 - sigma_next) * pred.x0 + (sigma_next**2 - std**2).clamp_min(0) ** 0.5 * pred.eps
    return Gaussian(mean=mean, std=torch.as_tensor(std, dtype=torch.float32))


def cps_log_prob(g: Gaussian, x_next: Tensor) -> Tensor:
    """flow_grpo's CPS "log-prob": −mean((x_next − mean)²) per batch element (B,), all constants and the
    1/(2·std²) scale removed (the reference's choice; ratios of it are exp of a difference of squared
    distances, not of Gaussian log-densities)."""
    return -((x_next.float() - g.mean.float()) ** 2).flatten(1).mean(dim=1)


SDE_TYPES = ("sde", "cps", "dance", "sage")


def transition(schedule: Schedule, i: int, x: Tensor, pred: Prediction, noise_level: float = 0.0,
               sde_type: str = "sde") -> Gaussian:
    """The kernel of step ``i`` for this schedule: DDIM(η=noise_level) for diffusion; the Euler ODE
    (noise_level = 0) or, with noise_level = a > 0, the Flow-GRPO SDE (``sde_type="sde"``), CPS
    (``"cps"``), DanceGRPO's constant-σ SDE (``"dance"``) or SAGE-GRPO's (``"sage"``) for flow."""
    if noise_level < 0:
        raise ValueError(f"noise level (eta / a) must be >= 0, got {noise_level}")
    if sde_type not in SDE_TYPES:
        raise ValueError(f"sde_type must be one of {', '.join(SDE_TYPES)}, got {sde_type!r}")
    if schedule.kind == "diffusion":
        if sde_type != "sde":
            raise ValueError(f"sde_type={sde_type!r} is a flow-matching kernel; use sde_type='sde' (DDIM η) "
                             f"for a diffusion model")
        a = schedule.alphas_cumprod
        return ddim(x, pred, a[i], a[i + 1], eta=noise_level)
    s = schedule.sigmas
    if noise_level == 0:
        return flow_euler(x, pred, s[i], s[i + 1])
    if sde_type == "cps":
        return flow_cps(x, pred, s[i + 1], noise_level)
    if sde_type == "dance":
        return dance_sde(x, pred, s[i], s[i + 1], noise_level)
    if sde_type == "sage":
        return sage_sde(x, pred, s[i], s[i + 1], noise_level)
    cap = s[s < 1].max() if bool((s < 1).any()) else s[-1]
    return flow_sde(x, pred, s[i], s[i + 1], noise_level, cap)


def sample(g: Gaussian, generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None) -> Tensor:
    """x_next = mean + std·ε with ε ~ N(0, I) from ``generator`` (or the given ``noise``)."""
    if g.deterministic:
        return g.mean
    if noise is None:
        noise = torch.randn(g.mean.shape, generator=generator, device="cpu" if generator is None else generator.device,
                            dtype=torch.float32).to(g.mean.device)
    return g.mean + g.std * noise


def log_prob(g: Gaussian, x_next: Tensor, reduce: str = "mean") -> Tensor:
    """log N(x_next; mean, std²) per batch element (B,), float32, mean or sum over dimensions."""
    if g.deterministic:
        raise ValueError("a deterministic (eta = 0 / ODE) step has no density; use noise_level > 0")
    std = g.std.float()
    lp = -((x_next.float() - g.mean.float()) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    lp = lp.expand_as(g.mean).flatten(1)
    if reduce == "mean":
        return lp.mean(dim=1)
    if reduce == "sum":
        return lp.sum(dim=1)
    raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")


def add_noise(schedule: Schedule, i: int, x0: Tensor, noise: Tensor) -> Tensor:
    """The forward process q(x_i | x0): sqrt(ᾱ)·x0 + sqrt(1−ᾱ)·ε (diffusion), (1−σ)·x0 + σ·ε (flow)."""
    if schedule.kind == "diffusion":
        a = schedule.alphas_cumprod[i]
        return a**0.5 * x0 + (1 - a) ** 0.5 * noise
    s = schedule.sigmas[i]
    return (1 - s) * x0 + s * noise


def renoise(schedule: Schedule, x: Tensor, j: int, i: int, noise: Tensor) -> Tensor:
    """Move a state at step ``j`` back to the noisier step ``i <= j`` with the forward process
    q(x_i | x_j): diffusion N(sqrt(ᾱ_i/ᾱ_j)·x, 1 − ᾱ_i/ᾱ_j); flow x_i = r·x + sqrt(σ_i² − r²σ_j²)·ε
    with r = (1−σ_i)/(1−σ_j)."""
    if i > j:
        raise ValueError(f"renoise goes from step j={j} back to an earlier step i <= j, got i={i}")
    if schedule.kind == "diffusion":
        ratio = schedule.alphas_cumprod[i] / schedule.alphas_cumprod[j]
        return ratio**0.5 * x + (1 - ratio).clamp_min(0) ** 0.5 * noise
    si, sj = schedule.sigmas[i], schedule.sigmas[j]
    r = (1 - si) / (1 - sj)
    return r * x + (si**2 - (r * sj) ** 2).clamp_min(0) ** 0.5 * noise


def renoise_along(schedule: Schedule, x: Tensor, j: int, i: int, noise: Tensor) -> Tensor:
    """Move a state at step ``j`` to the noisier step ``i <= j`` deterministically toward the noise endpoint
    ``noise``: x_i = a·x + b·ε with (a, b) such that the forward state of (x0, ε) at j lands on the one at i —
    diffusion a = sqrt(ᾱ_i/ᾱ_j), b = sqrt(1−ᾱ_i) − a·sqrt(1−ᾱ_j); flow a = (1−σ_i)/(1−σ_j), b = σ_i − a·σ_j
    (SOAR's re-noising "toward the same noise endpoint")."""
    if i > j:
        raise ValueError(f"renoise_along goes from step j={j} back to an earlier step i <= j, got i={i}")
    if schedule.kind == "diffusion":
        ai, aj = schedule.alphas_cumprod[i], schedule.alphas_cumprod[j]
        a = (ai / aj) ** 0.5
        return a * x + ((1 - ai) ** 0.5 - a * (1 - aj).clamp_min(0) ** 0.5) * noise
    si, sj = schedule.sigmas[i], schedule.sigmas[j]
    a = (1 - si) / (1 - sj)
    return a * x + (si - a * sj) * noise


def implied_noise(schedule: Schedule, i: int, x: Tensor, x0: Tensor) -> Tensor:
    """The noise ε with add_noise(x0, ε) = x at step ``i`` (so ``training_target`` of it points x̂0 at x0)."""
    if schedule.kind == "diffusion":
        a = schedule.alphas_cumprod[i]
        return (x - a**0.5 * x0) / (1 - a) ** 0.5
    s = schedule.sigmas[i]
    return (x - (1 - s) * x0) / s


def training_target(schedule: Schedule, i: int, x0: Tensor, noise: Tensor) -> Tensor:
    """What the model is trained to output at step ``i`` for x_i = add_noise(x0, noise):
    ε (epsilon), sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x0 (v_prediction), x0 (sample), ε − x0 (flow)."""
    if schedule.kind == "flow":
        return noise - x0
    a = schedule.alphas_cumprod[i]
    return {
        "epsilon": lambda: noise,
        "v_prediction": lambda: a**0.5 * noise - (1 - a) ** 0.5 * x0,
        "sample": lambda: x0,
    }[schedule.prediction_type]()
