"""Boundary checks shared by the adapters: option values, image sizes, prompts. Each error names the fix."""
from __future__ import annotations

import math
import operator
from typing import Optional, Sequence

import torch

from steer.errors import SteerError
from steer.pipelines import decoding

# Limits on the pipeline options (README "Limits"): past them a value is a typo or a resource bomb.
MAX_STEPS = 1000  # num_inference_steps: the training schedules have 1000 timesteps
MAX_SIDE = 8192  # pixels per image side
MAX_GUIDANCE = 100.0  # guidance_scale in [0, 100]; <= 1 turns classifier-free guidance off
MAX_BATCH = 100_000  # batch_size (latents per denoiser call)


def execution_device(pipe) -> torch.device:
    """Where the pipeline runs its models (diffusers' own notion, which respects CPU offload)."""
    return torch.device(getattr(pipe, "_execution_device", None) or pipe.device)


def positive_int(name: str, value: Optional[int], allow_none: bool = True, maximum: Optional[int] = None) -> Optional[int]:
    """``value`` as an int in [1, ``maximum``] (numpy integers accepted), or None when allowed."""
    if value is None and allow_none:
        return None
    try:
        v = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        v = None
    if v is None or v < 1:
        raise SteerError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")
    if maximum is not None and v > maximum:
        raise SteerError(f"{name}={v} is over the limit {maximum}; pass {name} <= {maximum}")
    return int(v)


def check_guidance(value) -> Optional[float]:
    """``guidance_scale`` as a finite float in [0, MAX_GUIDANCE], or None (the pipeline's default)."""
    if value is None:
        return None
    try:
        v = None if isinstance(value, (str, bytes, bool, complex)) else float(value)
    except (TypeError, ValueError, RuntimeError):
        v = None
    if v is None or not math.isfinite(v) or not 0 <= v <= MAX_GUIDANCE:
        raise SteerError(f"guidance_scale must be a finite number in [0, {MAX_GUIDANCE:g}] (<= 1 turns "
                         f"classifier-free guidance off), got {value!r}")
    return v


def image_size(name: str, sample_size, factor: int, height: Optional[int], width: Optional[int],
               pixels_per_sample: int = 1) -> tuple[int, int]:
    """(height, width) in pixels: the model's default ``sample_size * pixels_per_sample`` unless given;
    each must be a positive multiple of ``factor`` (what the model downsamples by) up to ``MAX_SIDE``."""
    default = tuple(sample_size) if isinstance(sample_size, (tuple, list)) else (sample_size, sample_size)
    size = []
    for label, v, d in zip(("height", "width"), (height, width), default):
        if v is None:
            size.append(d * pixels_per_sample)
            continue
        try:
            v = None if isinstance(v, bool) else operator.index(v)
        except TypeError:
            v = None
        given = height if label == "height" else width
        if v is None or v < factor or v % factor:
            raise SteerError(f"{name}: {label}={given!r} must be a positive multiple of {factor} "
                             f"(the model's downsampling factor); pass {label}=k*{factor}")
        if v > MAX_SIDE:
            raise SteerError(f"{name}: {label}={v} is over the limit {MAX_SIDE} pixels; pass {label} <= {MAX_SIDE}")
        size.append(int(v))
    return tuple(size)


def prompt_list(name: str, prompts) -> list[str]:
    """A prompt or a sequence of prompts as a non-empty list of strings."""
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts) if isinstance(prompts, Sequence) else prompts
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name}: prompts must be a string or a non-empty list of strings, got {prompts!r}")
    return prompts


def negative_prompts(name: str, negative_prompt, num_prompts: int) -> Optional[list[str]]:
    """``negative_prompt`` as one string per prompt (or None for diffusers' default)."""
    if negative_prompt is None:
        return None
    if isinstance(negative_prompt, str):
        return [negative_prompt] * num_prompts
    negs = list(negative_prompt)
    if len(negs) != num_prompts or not all(isinstance(n, str) for n in negs):
        raise ValueError(f"{name}: negative_prompt must be a string or a list of {num_prompts} strings "
                         f"(one per prompt), got {negative_prompt!r}")
    return negs


def latents(name: str, x: torch.Tensor, latent_shape: tuple[int, ...], what: str = "latents") -> None:
    """``x`` is (B, *latent_shape) floating point."""
    if not isinstance(x, torch.Tensor) or x.dim() != len(latent_shape) + 1 or tuple(x.shape[1:]) != tuple(latent_shape):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: {what} of shape {shape} do not match (B, {', '.join(map(str, latent_shape))}); "
                         f"make them with process.init_noise(n) or run the chain to the end first")
    if not x.is_floating_point():
        raise ValueError(f"{name}: {what} must be floating point, got {x.dtype}")


def bind_common(process, pipe, denoiser, *, num_inference_steps, batch_size, guidance_scale=None,
                negative_prompt=None) -> None:
    """Set the attributes every adapter shares (``pipe``, ``device``, ``dtype`` of the denoiser,
    ``batch_size``, ``guidance_scale``, ``negative_prompt``) and validate the step count."""
    process.pipe = pipe
    process.device = execution_device(pipe)
    process.dtype = denoiser.dtype
    process.batch_size = positive_int("batch_size", batch_size, maximum=MAX_BATCH)
    if guidance_scale is not None:
        process.guidance_scale = check_guidance(guidance_scale)
    process.negative_prompt = negative_prompt
    positive_int("num_inference_steps", num_inference_steps, allow_none=False, maximum=MAX_STEPS)


def resolution_bins(name: str, pipe, bins, height, width, use_resolution_binning, default: int):
    """PixArt / Sana resolution binning: (height, width) to generate at, and the requested size to crop
    back to (None: no binning). ``bins``: the pipeline's aspect-ratio table for its size (None if none);
    ``default``: the pipeline's default side when ``height`` / ``width`` are not given."""
    if use_resolution_binning and bins is None:
        raise ValueError(f"{name}: no aspect-ratio bins for transformer sample_size "
                         f"{pipe.transformer.config.sample_size}; pass use_resolution_binning=False")
    if bins is None or use_resolution_binning is False:
        return height, width, None
    orig = (height or default, width or default)
    return (*pipe.image_processor.classify_height_width_bin(*orig, ratios=bins), orig)


def vae_decode(name: str, vae, x0, latent_shape, crop_to=None):
    """Latents x̂0 (B, *latent_shape) -> images (B, 3, H, W) in [0, 1] through the VAE
    (``z = x0 / scaling_factor + shift_factor``, no shift when the VAE has none), differentiable.
    ``crop_to``: (image_processor, width, height) to resize-and-crop back to after resolution binning."""
    latents(name, x0, latent_shape)
    image = decoding.scaled_shift(vae, x0)  # (B, 3, H, W) in [-1, 1]
    if crop_to is not None:
        processor, width, height = crop_to
        image = processor.resize_and_crop_tensor(image, width, height)
    return (image.float() / 2 + 0.5).clamp(0, 1)


def vae_encode(name: str, vae, images, latent_shape, generator=None, unscale=None):
    """Images (B, 3, H, W) in [0, 1] -> clean latents x0 (B, *latent_shape): a sample of the VAE's
    posterior (as the pipelines' training scripts draw it), then ``(z − shift_factor) · scaling_factor``,
    the inverse of ``vae_decode`` (``unscale``: a family's own inverse of its latent scaling instead). No
    gradient flows into the VAE. The images must already have the process' size."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: images to encode must be (B, 3, H, W), got {tuple(images.shape)}")
    with torch.no_grad():
        x = (images.to(device=vae.device, dtype=vae.dtype) * 2 - 1).clamp(-1, 1)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=generator) if generator is not None else posterior.mode()
        if unscale is not None:
            x0 = unscale(z.float())
        else:
            config = vae.config
            x0 = (z.float() - (getattr(config, "shift_factor", None) or 0.0)) * config.scaling_factor
    if tuple(x0.shape[1:]) != tuple(latent_shape):
        raise ValueError(f"{name}: images of size {tuple(images.shape[2:])} encode to latents "
                         f"{tuple(x0.shape[1:])}, not the process' {tuple(latent_shape)}; resize them first")
    return x0
