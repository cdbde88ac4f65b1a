"""Shared frozen dataclasses, so that subpackages never import each other.

Shapes: ``B`` is a batch of latents (particles of one or more prompts, prompt-major), ``P`` prompts.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Mapping, Optional

import torch
from torch import Tensor

Kind = Literal["diffusion", "flow"]


@dataclass(frozen=True)
class Schedule:
    """The discretized chain x_{t_0} -> x_{t_1} -> ... -> x_{t_S}, read off a diffusers scheduler.

    ``timesteps[i]`` is what the denoiser is given at step i (i = 0..S-1).
    Diffusion (``kind="diffusion"``): ``alphas_cumprod[i]`` is ᾱ at step i, ``alphas_cumprod[S]`` the
    ᾱ the last step lands on (``final_alpha_cumprod``); ``prediction_type`` is what the model outputs.
    Flow (``kind="flow"``): ``sigmas[i]`` is σ at step i with x_σ = (1-σ)·x0 + σ·noise and ``sigmas[S]``
    the σ the last step lands on (0). All noise-level tensors are float32.
    """

    kind: Kind
    timesteps: Tensor  # (S,)
    prediction_type: str  # "epsilon" | "v_prediction" | "sample" | "flow"
    alphas_cumprod: Optional[Tensor] = None  # (S+1,) float32, diffusion only
    sigmas: Optional[Tensor] = None  # (S+1,) float32, flow only
    clip_sample: Optional[float] = None  # clamp x̂0 to ±clip_sample (diffusers' clip_sample_range)

    def __post_init__(self):
        levels = self.alphas_cumprod if self.kind == "diffusion" else self.sigmas
        if levels is None or levels.shape != (len(self.timesteps) + 1,):
            raise ValueError(
                f"Schedule of kind {self.kind!r} needs {len(self.timesteps) + 1} noise levels "
                f"(one per step plus the final one), got {None if levels is None else tuple(levels.shape)}"
            )

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


@dataclass(frozen=True)
class Cond:
    """Encoded prompts, one row per latent (prompt-major), with the guidance settings.

    ``tensors`` holds the family's conditioning (text embeddings, pooled embeddings, masks, ...),
    every value with the batch dimension first. Negative/unconditional embeddings for classifier-free
    guidance are stored under keys starting with ``"negative_"``; ``predict`` concatenates them.
    """

    prompts: tuple[str, ...]
    tensors: Mapping[str, Tensor]
    guidance_scale: float = 1.0
    detach_uncond: bool = False  # guidance's unconditional branch without gradients (Flow-GRPO's training)

    def __len__(self) -> int:
        return len(self.prompts)

    def index(self, idx: Tensor | list[int]) -> "Cond":
        """Rows ``idx`` of every tensor (used to lay out particles or keep a subset)."""
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        tensors = {k: v[idx_t.to(v.device)] for k, v in self.tensors.items()}
        return replace(self, prompts=tuple(self.prompts[i] for i in idx_t.tolist()), tensors=tensors)

    def repeat(self, k: int) -> "Cond":
        """Each prompt's row repeated ``k`` times, prompt-major: [p0]*k + [p1]*k + ..."""
        return self.index(torch.arange(len(self)).repeat_interleave(k))


@dataclass(frozen=True)
class Prediction:
    """One denoiser evaluation (guidance applied), in float32.

    ``output``: the model's own parameterization (ε, v, x0 or flow velocity v = noise − x0).
    ``x0``: the data prediction x̂0. ``eps``: the noise prediction (ε for diffusion; the implied
    noise x̂1 = x + (1−σ)·v for flow).
    """

    output: Tensor
    x0: Tensor
    eps: Tensor


@dataclass(frozen=True)
class StepInfo:
    """What a method's core generator yields after each step (for callbacks, progress, tests)."""

    step: int
    x: Tensor
    nfe: int
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass
class Result:
    """What every method returns. ``images`` is one selected image per prompt, [P,3,H,W] in [0,1],
    decoded from ``latents``."""

    images: Tensor
    rewards: Tensor  # (P,)
    trace: "object"
    latents: Optional[Tensor] = None  # (P, ...) the selected final latents: process.decode(latents) == images
    candidates: Optional[Tensor] = None  # (P, K, 3, H, W) every particle/candidate, when kept
    candidate_rewards: Optional[Tensor] = None  # (P, K)
    log_weights: Optional[Tensor] = None  # (P, K) where the method has weights
    prompts: tuple[str, ...] = ()
    initial_noise: Optional[Tensor] = None  # (P, ...) x_T of the selected samples, where a method optimizes it (ReNO)
    eval_rewards: Optional[Tensor] = None  # (P,) a held-out reward of ``images`` (``eval_reward=``), never steered by

    def pil(self):
        """The selected images as PIL images."""
        from PIL import Image

        arr = (self.images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in arr]
