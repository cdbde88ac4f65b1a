"""The rectified-flow chain of a flow-matching pipeline, read off its own scheduler.

SD3 and FLUX carry a ``FlowMatchEulerDiscreteScheduler`` whose ``set_timesteps`` applies the
model's time shift (a fixed ``shift`` for SD3, a resolution-dependent ``mu`` with
``use_dynamic_shifting`` for FLUX and SD3.5-style configs). We call ``set_timesteps`` on a deep copy
of the pipeline's scheduler exactly as the pipeline does, and read ``timesteps`` (S,) and ``sigmas``
(S+1, the last one 0) off it; its ``step()`` is never called (``steer.kernels.flow_euler`` /
``flow_sde`` do the transitions). The pipeline's scheduler is left untouched.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch

from steer.types import Schedule


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's resolution-dependent shift μ: linear in the number of image tokens (Esser et al. 2024,
    "Scaling Rectified Flow Transformers", §5.3.2), as ``diffusers.pipelines.flux.calculate_shift``."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def mu_from_config(config, image_seq_len: int, default_max_shift: float) -> float:
    """μ for ``image_seq_len`` tokens with the scheduler config's bounds (FLUX defaults max_shift to
    1.15, SD3 to 1.16 — each pipeline passes its own)."""
    return calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", default_max_shift),
    )


def flow_schedule(scheduler, num_inference_steps: int, device=None, *,
                  sigmas: Optional[Sequence[float]] = None, mu: Optional[float] = None) -> Schedule:
    """``Schedule(kind="flow")`` from a flow-matching scheduler after
    ``set_timesteps(num_inference_steps | sigmas, mu=mu)`` on a copy of it."""
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    config = scheduler.config
    name = type(scheduler).__name__
    if not hasattr(scheduler, "sigmas") or "shift" not in config:
        raise ValueError(f"{name} is not a flow-matching scheduler; the flow adapters need "
                         f"FlowMatchEulerDiscreteScheduler (or a scheduler with its config)")
    if config.get("invert_sigmas", False) or config.get("stochastic_sampling", False):
        raise ValueError(f"{name} has invert_sigmas or stochastic_sampling set; steer samples the flow "
                         f"chain itself (noise via noise_level): register_to_config(invert_sigmas=False, "
                         f"stochastic_sampling=False)")
    if config.get("use_dynamic_shifting", False) and mu is None:
        raise ValueError(f"{name} uses dynamic shifting: pass mu (see steer.pipelines.flow_schedule.mu_from_config)")
    sched = copy.deepcopy(scheduler)
    kwargs = {} if mu is None else {"mu": mu}
    if sigmas is not None:
        if len(sigmas) != num_inference_steps:
            raise ValueError(f"{len(sigmas)} sigmas given for num_inference_steps={num_inference_steps}")
        sched.set_timesteps(sigmas=sigmas, device=device, **kwargs)
    else:
        sched.set_timesteps(num_inference_steps, device=device, **kwargs)
    timesteps = sched.timesteps  # (S,) float32, σ·T before the terminal 0
    levels = sched.sigmas.to(device=device, dtype=torch.float32)  # (S+1,)
    if levels.shape != (num_inference_steps + 1,) or float(levels[-1]) != 0.0:
        raise ValueError(f"{name} produced sigmas of shape {tuple(levels.shape)} ending at "
                         f"{float(levels[-1]):g}; expected {num_inference_steps + 1} ending at 0")
    return Schedule(kind="flow", timesteps=timesteps, sigmas=levels, prediction_type="flow")
