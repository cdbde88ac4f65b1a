"""The inverse DDIM step (DDIM inversion: x_i -> the noisier x_{i-1} level, as diffusers' ``DDIMInverseScheduler``)
and its flow counterpart, the Euler ODE run backward; InPO's inversion noise as an option. Beside ``steer.kernels``."""
from __future__ import annotations

import torch
from torch import Tensor

from steer import kernels
from steer.kernels import Gaussian
from steer.types import Prediction, Schedule


def ddim_inverse(pred: Prediction, alpha_t: Tensor, alpha_next: Tensor, eta: float = 0.0) -> Gaussian:
    """Inverse DDIM step x_t → x_{t+1} toward the noise (Song et al. 2021, eq. 12 run backward; diffusers'
    ``DDIMInverseScheduler.step``): mean = sqrt(ᾱ_{t+1})·x̂0 + sqrt(1 − ᾱ_{t+1})·ε̂ with x̂0, ε̂ read at ᾱ_t
    (``pred``). ``eta`` > 0 adds InPO's inversion noise, std = η·sqrt((1 − ᾱ_t)/(1 − ᾱ_{t+1})·(1 − ᾱ_{t+1}/ᾱ_t)),
    the DDPM (η = 1) std of the forward step between the two levels."""
    variance = (1 - alpha_t) / (1 - alpha_next) * (1 - alpha_next / alpha_t)
    mean = alpha_next**0.5 * pred.x0 + (1 - alpha_next) ** 0.5 * pred.eps
    return Gaussian(mean=mean, std=torch.as_tensor(eta * variance.clamp_min(0) ** 0.5, dtype=torch.float32))


def inverse_transition(schedule: Schedule, i: int, x: Tensor, output: Tensor, noise_level: float = 0.0) -> Gaussian:
    """The inverse of step ``i``: from x at level i + 1 back to the noisier level i, given a model ``output``
    (the caller picks where it was evaluated; DDIM inversion evaluates it at step i, as diffusers' pipelines do
    with ``DDIMInverseScheduler``). Diffusion: ``ddim_inverse`` with x̂0, ε̂ read at ᾱ_{i+1}; flow: the Euler
    step of the ODE backward, x_i = x + (σ_i − σ_{i+1})·v̂ (noise_level must be 0)."""
    if noise_level < 0:
        raise ValueError(f"inversion noise level must be >= 0, got {noise_level}")
    pred = kernels.to_prediction(schedule, i + 1, x, output)
    if schedule.kind == "diffusion":
        a = schedule.alphas_cumprod
        return ddim_inverse(pred, a[i + 1], a[i], eta=noise_level)
    if noise_level != 0:
        raise ValueError(f"flow inversion is the deterministic ODE run backward: use noise level 0, got {noise_level}")
    s = schedule.sigmas
    return kernels.flow_euler(x, pred, s[i + 1], s[i])
