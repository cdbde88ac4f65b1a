"""A rectified-flow model sampled as a variance-preserving SDE (Kim et al. 2025, "Inference-Time Scaling
for Flow Models via Stochastic Generation and Rollover Budget Forcing", §4: interpolant conversion +
ODE→SDE conversion; code KAIST-Visual-AI-Group/Flow-Inference-Time-Scaling, ``rbf/prior/flux.py``).

The model is trained on the linear path x_t = (1−t)·x0 + t·ε. The VP path x_r = α_r·x0 + σ_r·ε with
T(r) = ½r²(β_max−β_min) + r·β_min, α_r = exp(−T/2), σ_r = sqrt(1 − exp(−T)) (the reference's
``VPScheduler``, β_min = 0.1, β_max = 20) holds the same states up to scale: x_r = s_r·x_t at the t of
equal signal-to-noise ratio, t(r) = σ_r/(α_r+σ_r), s_r = α_r + σ_r. On it the reverse SDE with the
marginals of the ODE is

    x_{r−Δr} = x_r − [u_r − ½g(r)²·∇log p_r]·Δr + g(r)·sqrt(Δr)·w,   g(r) = norm·r²

(the reference's ``diffusion_coefficient="square"``, ``diffusion_norm=3``), with the converted
velocity u_r = α'_r·x̂0 + σ'_r·ε̂ and score ∇log p_r = −ε̂/σ_r from the model's x̂0, ε̂ at t(r) (the
reference's ``compute_velocity_transform_scheduler`` and ``convert_velocity_to_score`` reduce to these).

Notation: ``r`` the VP time, ``t``/``sigma`` the flow time of the process' schedule, ``s`` the scale.
Deviation from the reference: the reference steps on a grid uniform in r and evaluates the model at
t(r); here the grid is the preimage of the process' own σ-schedule, r_i = r(σ_i) (so the model is
called at its scheduled times and states stay in the process' coordinates x_t = x_r/s_r), and σ above
t(1) ≈ 0.9934 maps to r = 1 (the reference starts at r = 1).
"""
from __future__ import annotations

import torch
from torch import Tensor

from steer.kernels import Gaussian
from steer.types import Prediction, Schedule

BETA_MIN, BETA_MAX = 0.1, 20.0


def vp(r: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(α_r, σ_r, dα/dr, dσ/dr) of the VP path at r (float32)."""
    b, B = BETA_MIN, BETA_MAX
    T = 0.5 * r**2 * (B - b) + r * b
    dT = r * (B - b) + b
    e = torch.exp(-T)
    sigma = torch.sqrt(1 - e)
    return torch.exp(-0.5 * T), sigma, -0.5 * dT * torch.exp(-0.5 * T), 0.5 * dT * e / sigma.clamp_min(1e-12)


def vp_time(t: Tensor) -> Tensor:
    """r with the signal-to-noise ratio of flow time t: (1−t)/t = α_r/σ_r; t ≥ t(1) maps to 1, t = 0 to 0."""
    t = torch.as_tensor(t, dtype=torch.float32)
    b, B = BETA_MIN, BETA_MAX
    T = torch.log1p(t**2 / (1 - t).clamp_min(1e-12) ** 2)  # −log(snr²/(snr²+1))
    r = (-b + torch.sqrt(b**2 + 2 * (B - b) * T)) / (B - b)
    return r.clamp(0.0, 1.0)


def scale(r: Tensor) -> Tensor:
    """s_r = α_r + σ_r: x_r = s_r·x_{t(r)}."""
    a, s, _, _ = vp(r)
    return a + s


def vp_sde(schedule: Schedule, i: int, x: Tensor, pred: Prediction, norm: float) -> Gaussian:
    """The kernel x_{i+1} | x_i of the VP-converted SDE, in the process' coordinates (float32)."""
    if schedule.kind != "flow":
        raise ValueError("the VP-SDE conversion applies to flow-matching processes; a diffusion process "
                         "is already VP (use its DDIM kernel with eta)")
    r, r_next = vp_time(schedule.sigmas[i]), vp_time(schedule.sigmas[i + 1])
    a, s, da, ds = vp(r)
    dr = r - r_next  # > 0 (0 where both σ map to r = 1)
    x_r = scale(r) * x.float()  # (B, *latent)
    u = da * pred.x0 + ds * pred.eps  # converted velocity u_r
    g = norm * r**2
    mean_r = x_r - (u + 0.5 * g**2 * pred.eps / s) * dr  # −u + ½g²·score, score = −ε̂/σ_r
    s_next = scale(r_next)
    return Gaussian(mean=mean_r / s_next, std=(g * dr.clamp_min(0) ** 0.5 / s_next).float())
