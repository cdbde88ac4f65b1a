"""The DDIM chain of a diffusion pipeline, read off its scheduler's config.

Whatever scheduler the user's pipeline carries (PNDM, Euler, DPM-Solver, DDIM, DDPM, ...), its
config holds the noise schedule the model was trained with (betas, ``prediction_type``,
``timestep_spacing``, ``steps_offset``, ``clip_sample``). We build a ``DDIMScheduler`` from that
config and read the discretization off it; its ``step()`` is never called (``steer.kernels.ddim``
does the transitions). So a pipeline shipped with PNDM or Euler is sampled by steer with DDIM
(η = ``noise_level``), which is what every steering method here assumes.

``alphas_cumprod[i]`` is ᾱ(t_i) for i < S, and ``alphas_cumprod[S]`` is what DDIM's rule gives for
the last step: ᾱ(t_{S-1} − T//S) if that is ≥ 0, else ``final_alpha_cumprod``. In between, the chain
lands on ᾱ(t_{i+1}); that is exactly DDIM's own ᾱ(t_i − T//S) for ``timestep_spacing="leading"``
(SD 1.x/2.x, SDXL) and for ``"trailing"`` when S divides T. For ``"linspace"`` DDIMScheduler's step
lands on a different ᾱ than the next step assumes; steer keeps the chain self-consistent instead.
"""
from __future__ import annotations

from typing import Mapping

import torch

from steer.types import Schedule


def after_last(alphas_cumprod: torch.Tensor, last_t: int, num_train_timesteps: int, num_inference_steps: int,
               final_alpha_cumprod) -> torch.Tensor:
    """ᾱ after the last step t_{S-1}: DDIM's ᾱ(t_{S-1} − T//S) if that is ≥ 0, else ``final_alpha_cumprod``
    (a 0-d float32 tensor; ``steer.wrapping.step`` uses the same rule on the pipeline's own scheduler)."""
    prev = last_t - num_train_timesteps // num_inference_steps
    return alphas_cumprod[prev] if prev >= 0 else torch.as_tensor(final_alpha_cumprod, dtype=torch.float32)


def ddim_schedule(scheduler_config: Mapping, num_inference_steps: int, device=None) -> Schedule:
    """``Schedule(kind="diffusion")`` with S = ``num_inference_steps`` steps from a scheduler config."""
    from diffusers import DDIMScheduler

    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    config = dict(scheduler_config)
    if "prediction_type" not in config or config.get("prediction_type") == "flow_prediction":
        raise ValueError(f"scheduler config of {config.get('_class_name', 'this scheduler')} is not a "
                         f"diffusion (ᾱ) schedule; use the flow-matching adapter for this pipeline")
    if config.get("thresholding", False):
        raise ValueError("dynamic thresholding (scheduler thresholding=True) is not supported by steer's "
                         "DDIM kernel; set pipe.scheduler.register_to_config(thresholding=False)")
    ddim = DDIMScheduler.from_config(config)
    T = ddim.config.num_train_timesteps
    if num_inference_steps > T:
        raise ValueError(f"num_inference_steps={num_inference_steps} exceeds the {T} training timesteps")
    ddim.set_timesteps(num_inference_steps, device=device)
    timesteps = ddim.timesteps  # (S,) int64
    ac = ddim.alphas_cumprod.float()  # (T,)
    final = after_last(ac, int(timesteps[-1]), T, num_inference_steps, ddim.final_alpha_cumprod)
    levels = torch.cat([ac[timesteps.cpu()], final.reshape(1)])  # (S+1,)
    clip = float(ddim.config.clip_sample_range) if ddim.config.clip_sample else None
    return Schedule(kind="diffusion", timesteps=timesteps, alphas_cumprod=levels.to(device),
                    prediction_type=ddim.config.prediction_type, clip_sample=clip)
