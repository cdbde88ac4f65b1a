"""The ``Process``: a diffusers pipeline seen as a Markov chain x_T -> ... -> x_0.

A family adapter implements four things — ``prepare`` (encode prompts once), ``denoise`` (one
batched, guided denoiser call), ``decode`` (latents -> images in [0, 1], differentiable) and the
``schedule`` — and inherits ``predict`` (validation, chunking by ``batch_size``, NFE counting,
conversion to x̂0/ε̂) and ``init_noise``.

A user's own denoiser: subclass ``Process`` and implement the same four pieces; every steering
method then works on it unchanged (``steer/zoo/gmm.py`` is a complete 2-D example with an exact
target).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional, Sequence

import torch
from torch import Tensor

from steer import kernels
from steer.types import Cond, Prediction, Schedule


class Process(ABC):
    """Base class of every adapter. Subclasses set ``schedule``, ``latent_shape``, ``device``,
    ``dtype`` (the denoiser's), and optionally ``batch_size`` (latents per denoiser call)."""

    schedule: Schedule
    latent_shape: tuple[int, ...]
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    batch_size: Optional[int] = None
    name: str = "process"

    # ---- what a family implements -------------------------------------------------------
    @abstractmethod
    def prepare(self, prompts: Sequence[str]) -> Cond:
        """Encode ``prompts`` once (and the negative prompt for guidance): one row per prompt."""

    @abstractmethod
    def denoise(self, x: Tensor, i: int, cond: Cond) -> Tensor:
        """One batched denoiser call at step ``i`` with guidance applied; returns the raw model
        output in the schedule's parameterization, same shape as ``x``."""

    @abstractmethod
    def decode(self, x0: Tensor) -> Tensor:
        """Latents (B, *latent_shape) -> images (B, 3, H, W) in [0, 1], differentiable."""

    def encode(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] at the process' size -> clean latents x0 (B, *latent_shape),
        the inverse of ``decode`` (used to train on images from disk, e.g. a preference dataset).
        Families with a VAE encoder implement it; the others refuse."""
        raise ValueError(f"{self.name} cannot encode images into latents; train from samples instead "
                         f"(source='steering' or 'verifier'), or use a Stable Diffusion, SDXL, SD3 or PixArt "
                         f"pipeline")

    # ---- shared -------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    def init_noise(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """x_T ~ N(0, I), (n, *latent_shape), float32 on the process' device."""
        return standard_normal((n, *self.latent_shape), generator).to(self.device)

    def predict(self, x: Tensor, i: int, cond: Cond, trace=None) -> Prediction:
        """Denoiser evaluation at step ``i`` for every row of ``x``, chunked by ``batch_size``;
        counts ``len(x)`` NFE into ``trace``. Returns float32 ``Prediction``."""
        self._validate(x, i, cond)
        if trace is None:
            return kernels.to_prediction(self.schedule, i, x, self._denoise_chunked(x, i, cond))
        trace.add_nfe(x.shape[0])
        with trace.timed("denoise"):
            return kernels.to_prediction(self.schedule, i, x, self._denoise_chunked(x, i, cond))

    def _denoise_chunked(self, x: Tensor, i: int, cond: Cond) -> Tensor:
        chunk = self.batch_size or x.shape[0]
        if chunk >= x.shape[0]:
            return self.denoise(x, i, cond)
        return torch.cat([
            self.denoise(x[s:s + chunk], i, cond.index(range(s, min(s + chunk, x.shape[0]))))
            for s in range(0, x.shape[0], chunk)
        ])

    def _validate(self, x: Tensor, i: int, cond: Cond) -> None:
        if tuple(x.shape[1:]) != tuple(self.latent_shape):
            raise ValueError(
                f"{self.name}: latents of shape {tuple(x.shape)} do not match the process' latent shape "
                f"(B, {', '.join(map(str, self.latent_shape))}); make them with process.init_noise(n)"
            )
        if x.shape[0] != len(cond):
            raise ValueError(
                f"{self.name}: {x.shape[0]} latents but {len(cond)} conditioning rows; "
                f"lay particles out with cond.repeat(k)"
            )
        if not 0 <= i < self.num_steps:
            raise ValueError(f"{self.name}: step {i} outside 0..{self.num_steps - 1}")
        if x.device.type != torch.device(self.device).type:
            raise ValueError(f"{self.name}: latents on {x.device} but the denoiser is on {self.device}; "
                             f"move them with .to(process.device)")
        if not x.is_floating_point():
            raise ValueError(f"{self.name}: latents must be floating point, got {x.dtype}")


def standard_normal(shape, generator: Optional[torch.Generator] = None) -> Tensor:
    """N(0, I) of ``shape``, float32, drawn on the generator's device (CPU without one), as diffusers'
    ``randn_tensor`` draws a pipeline's initial latents."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)


def guide(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): ε_u + s·(ε_c − ε_u), in diffusers' order."""
    return uncond + scale * (cond - uncond)
