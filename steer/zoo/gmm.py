"""The exact-target harness: a 2-D Gaussian-mixture "pipeline" with an analytic denoiser.

The data distribution p0 = Σ_k w_k N(μ_k, s_k² I) is known, so the posterior mean E[x0 | x_t] —
hence the ideal ε / velocity prediction — is exact at every noise level, with no training. For a
reward r(x) the reward-tilted target p0(x)·exp(λ·r(x)) is computed on a grid, so a steering
method's samples can be compared with it in total variation. Two schedules:

- ``kind="diffusion"``: DDPM linear β from 1e-4 to 0.02 over 1000 steps, DDIM "leading" spacing,
  ε-prediction (final ᾱ = 1);
- ``kind="flow"``: rectified flow x_σ = (1−σ)·x0 + σ·ε, σ uniform from 1 to 0, velocity prediction.

"Images" of this process are the points themselves, laid out as (B, 3, 1, 1) with channels
(x, y, 0), so the ordinary ``Reward`` protocol applies (``PointReward``). This module is also the
worked example of a user-defined ``Process``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from steer.pipelines.base import Process
from steer.rewards.base import Reward
from steer.types import Cond, Schedule


@dataclass(frozen=True)
class GaussianMixture:
    """Σ_k w_k N(μ_k, s_k² I) in 2-D."""

    weights: Tensor  # (K,)
    means: Tensor  # (K, 2)
    stds: Tensor  # (K,)

    @staticmethod
    def default() -> "GaussianMixture":
        """Four well-separated isotropic modes with unequal weights."""
        return GaussianMixture(
            weights=torch.tensor([0.4, 0.3, 0.2, 0.1]),
            means=torch.tensor([[-1.5, -1.5], [1.5, -1.5], [-1.5, 1.5], [1.5, 1.5]]),
            stds=torch.tensor([0.35, 0.35, 0.35, 0.35]),
        )

    def log_prob(self, x: Tensor) -> Tensor:
        """log p0(x) for x (N, 2)."""
        return self._marginal_log_prob(x, torch.ones(()), torch.zeros(()))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.means[k] + self.stds[k, None] * torch.randn(n, 2, generator=generator)

    def _marginal_log_prob(self, x: Tensor, scale: Tensor, noise_std: Tensor) -> Tensor:
        """log of Σ_k w_k N(x; scale·μ_k, (scale² s_k² + noise_std²) I)."""
        var = scale**2 * self.stds**2 + noise_std**2  # (K,)
        d2 = ((x[:, None, :] - scale * self.means[None]) ** 2).sum(-1)  # (N, K)
        comp = -0.5 * d2 / var - torch.log(2 * torch.pi * var)
        return torch.logsumexp(comp + torch.log(self.weights), dim=1)

    def posterior(self, x: Tensor, scale: Tensor, noise_std: Tensor) -> tuple[Tensor, Tensor]:
        """For x = scale·x0 + noise_std·ε: (E[x0 | x], E[ε | x]), each (N, 2), exactly."""
        var = scale**2 * self.stds**2 + noise_std**2  # (K,)
        centered = x[:, None, :] - scale * self.means[None]  # (N, K, 2)
        logits = -0.5 * (centered**2).sum(-1) / var - torch.log(var) + torch.log(self.weights)  # (N, K)
        resp = torch.softmax(logits, dim=1)[..., None]  # (N, K, 1)
        x0_k = self.means[None] + (scale * self.stds**2 / var)[None, :, None] * centered
        eps_k = (noise_std / var)[None, :, None] * centered
        return (resp * x0_k).sum(1), (resp * eps_k).sum(1)


def _ddpm_schedule(num_steps: int, num_train_timesteps: int = 1000) -> Schedule:
    betas = torch.linspace(1e-4, 0.02, num_train_timesteps, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    ratio = num_train_timesteps // num_steps
    timesteps = torch.arange(0, num_steps) * ratio
    timesteps = timesteps.flip(0)  # (S,) descending, "leading" spacing
    levels = torch.cat([alphas_cumprod[timesteps], torch.ones(1, dtype=torch.float64)])
    return Schedule(kind="diffusion", timesteps=timesteps, prediction_type="epsilon",
                    alphas_cumprod=levels.float())


def _flow_schedule(num_steps: int) -> Schedule:
    sigmas = torch.linspace(1.0, 0.0, num_steps + 1)
    return Schedule(kind="flow", timesteps=sigmas[:-1] * 1000, prediction_type="flow", sigmas=sigmas)


class GMMProcess(Process):
    """A ``Process`` whose denoiser is the exact posterior of a ``GaussianMixture``."""

    latent_shape = (2,)
    name = "gmm"

    def __init__(self, mixture: GaussianMixture | None = None, *, kind: str = "diffusion", num_inference_steps: int = 50):
        if kind not in ("diffusion", "flow"):
            raise ValueError(f"kind must be 'diffusion' or 'flow', got {kind!r}")
        self.mixture = mixture or GaussianMixture.default()
        self.schedule = _ddpm_schedule(num_inference_steps) if kind == "diffusion" else _flow_schedule(num_inference_steps)

    def prepare(self, prompts: Sequence[str]) -> Cond:
        return Cond(prompts=tuple(prompts), tensors={})

    def denoise(self, x: Tensor, i: int, cond: Cond) -> Tensor:
        x = x.float()
        if self.schedule.kind == "diffusion":
            a = self.schedule.alphas_cumprod[i]
            _, eps = self.mixture.posterior(x, a.sqrt(), (1 - a).sqrt())
            return eps  # (B, 2) ε-prediction
        s = self.schedule.sigmas[i]
        x0, eps = self.mixture.posterior(x, 1 - s, s)
        return eps - x0  # (B, 2) velocity

    def decode(self, x0: Tensor) -> Tensor:
        return torch.cat([x0, torch.zeros_like(x0[:, :1])], dim=1)[:, :, None, None]  # (B, 3, 1, 1)


class PointReward(Reward):
    """A reward on the harness' points: ``fn(points (B, 2)) -> (B,)``, differentiable if ``fn`` is."""

    def __init__(self, fn: Callable[[Tensor], Tensor], name: str = "point", differentiable: bool = True):
        self.fn, self.name, self.differentiable = fn, name, differentiable

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.fn(images[:, :2, 0, 0])


def quadratic_reward(center=(1.5, 1.5)) -> PointReward:
    """r(x) = −‖x − c‖²: pulls mass towards ``c`` (by default the lightest mode)."""
    c = torch.tensor(center, dtype=torch.float32)
    return PointReward(lambda p: -((p - c) ** 2).sum(-1), name="quadratic")


# ---- exact targets on a grid -------------------------------------------------------------

def grid(lim: float = 4.0, bins: int = 40) -> tuple[Tensor, Tensor]:
    """Bin edges (bins+1,) and bin centres as points (bins², 2), row-major in (x, y)."""
    edges = torch.linspace(-lim, lim, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    gx, gy = torch.meshgrid(centres, centres, indexing="ij")
    return edges, torch.stack([gx.flatten(), gy.flatten()], dim=1)


def tilted_target(mixture: GaussianMixture, reward_fn: Callable[[Tensor], Tensor], lam: float,
                  lim: float = 4.0, bins: int = 40, sub: int = 4) -> Tensor:
    """Bin probabilities (bins, bins) of p0(x)·exp(λ·r(x)), integrated with ``sub``² points per bin."""
    fine_edges, fine = grid(lim, bins * sub)
    logp = mixture.log_prob(fine) + lam * reward_fn(fine)
    p = torch.softmax(logp, 0).reshape(bins, sub, bins, sub).sum(dim=(1, 3))
    return p


def histogram(points: Tensor, lim: float = 4.0, bins: int = 40) -> Tensor:
    """Empirical bin probabilities (bins, bins) of points (N, 2); mass outside the box is kept out
    of every bin (so it counts fully towards the TV distance)."""
    idx = ((points.float() + lim) / (2 * lim) * bins).floor().long()  # (N, 2)
    inside = ((idx >= 0) & (idx < bins)).all(1)
    flat = idx[inside, 0] * bins + idx[inside, 1]
    counts = torch.bincount(flat, minlength=bins * bins).float()
    return (counts / points.shape[0]).reshape(bins, bins)


def tv_distance(p: Tensor, q: Tensor) -> float:
    """Total variation ½ Σ|p − q| between two histograms; missing mass counts as difference."""
    diff = (p - q).abs().sum() + abs(1 - float(p.sum())) + abs(1 - float(q.sum()))
    return float(diff) / 2
