"""Latents -> images: one rule per latent layout, used by a family's adapter (``Process.decode``) and by
``steer.wrap`` (``steer.wrapping.decode``), so the two cannot drift apart.

A rule is ``raw(rule, pipe, x, height, width)``: latents (B, ...) -> the VAE's output (B, 3, H, W),
about [-1, 1] (what a pipeline's ``image_processor`` post-processes); ``to_unit`` maps it to [0, 1]
(the ``Process.decode`` contract). Each rule is the decode line of the diffusers pipelines named for
it (read from diffusers 0.42):

================  ===================================================  ==========================================
rule              VAE input z from latents x                           pipelines
================  ===================================================  ==========================================
``scaled``        z = x / scaling_factor                               SD 1.x/2.x (+ img2img, ControlNet), AuraFlow,
                                                                       CogView3-Plus, CogView4, HunyuanDiT
``scaled_shift``  z = x / scaling_factor + shift_factor (none when     SD3 (+ img2img), Lumina2, PixArt, Sana,
                  the VAE has no ``shift_factor``)                     Sana-Sprint, Z-Image
``sdxl``          z = x·std / scaling_factor + mean where the VAE has  SDXL (+ img2img, ControlNet), Kolors
                  ``latents_mean`` / ``latents_std``, else ``scaled``;
                  an fp16 VAE with ``force_upcast`` decodes in float32
``packed``        FLUX's ``_unpack_latents`` (B, h·w/4, 4C) ->         FLUX.1 (+ img2img)
                  (B, C, h, w), then ``scaled_shift``
================  ===================================================  ==========================================

Which rule a pipeline uses: its adapter's ``latent_rule`` (``steer.pipelines.families.FAMILIES``), else
its class (or a base class) in ``PIPELINES`` (pipelines steer.wrap steers without an adapter). A new
family sets ``latent_rule`` on its adapter and calls ``raw`` in its ``decode``.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import Tensor


def scaled(vae, x: Tensor) -> Tensor:
    """z = x / scaling_factor -> VAE output (B, 3, H, W) in about [-1, 1]."""
    z = x.to(vae.dtype) / vae.config.scaling_factor
    return vae.decode(z, return_dict=False)[0]


def scaled_shift(vae, x: Tensor) -> Tensor:
    """z = x / scaling_factor + shift_factor (no shift when the VAE has none) -> VAE output."""
    config = vae.config
    z = x.to(vae.dtype) / config.scaling_factor
    shift = getattr(config, "shift_factor", None)
    if shift is not None:
        z = z + shift
    return vae.decode(z, return_dict=False)[0]


def sdxl_unscale(config, z: Tensor) -> Tensor:
    """SDXL's latent -> VAE latent: z·std / scaling_factor + mean when the config has both, else z / scaling_factor."""
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is None or std is None:
        return z / config.scaling_factor
    mean = torch.tensor(mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
    std = torch.tensor(std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
    return z * std / config.scaling_factor + mean


def needs_upcast(vae) -> bool:
    """An fp16 VAE whose config asks to run in float32 (``force_upcast``), as diffusers' SDXL pipelines do."""
    return vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))


def sdxl(vae, x: Tensor) -> Tensor:
    """``sdxl_unscale`` then the VAE, in float32 when ``needs_upcast`` (the VAE is cast back afterwards)."""
    upcast = needs_upcast(vae)
    z = sdxl_unscale(vae.config, x.to(torch.float32 if upcast else vae.dtype))  # (B, 4, h, w)
    if upcast:
        vae.to(torch.float32)
    try:
        return vae.decode(z, return_dict=False)[0]  # (B, 3, H, W) in [-1, 1]
    finally:
        if upcast:
            vae.to(torch.float16)


def packed(pipe, x: Tensor, height: Optional[int], width: Optional[int]) -> Tensor:
    """FLUX.1: packed latents (B, h·w/4, 4C) -> (B, C, h, w) by the pipeline's ``_unpack_latents``, then
    ``scaled_shift``."""
    return scaled_shift(pipe.vae, pipe._unpack_latents(x, height, width, pipe.vae_scale_factor))


RULES = ("scaled", "scaled_shift", "sdxl", "packed")

# pipelines without an adapter that steer.wrap steers: class name -> rule
PIPELINES: dict[str, str] = {
    **dict.fromkeys(("StableDiffusionImg2ImgPipeline", "StableDiffusionControlNetPipeline",
                     "StableDiffusionControlNetImg2ImgPipeline", "AuraFlowPipeline", "CogView3PlusPipeline",
                     "CogView4Pipeline", "HunyuanDiTPipeline"), "scaled"),
    **dict.fromkeys(("StableDiffusion3Img2ImgPipeline", "Lumina2Pipeline", "SanaSprintPipeline"), "scaled_shift"),
    **dict.fromkeys(("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLControlNetPipeline", "KolorsPipeline"),
                    "sdxl"),
    **dict.fromkeys(("FluxImg2ImgPipeline",), "packed"),
}


def raw(rule: str, pipe, x: Tensor, height: Optional[int] = None, width: Optional[int] = None) -> Tensor:
    """Latents (B, ...) -> the VAE's images (B, 3, H, W), about [-1, 1], by ``rule``."""
    if rule == "packed":
        return packed(pipe, x, height, width)
    return {"scaled": scaled, "scaled_shift": scaled_shift, "sdxl": sdxl}[rule](pipe.vae, x)


def to_unit(image: Tensor) -> Tensor:
    """VAE output in [-1, 1] -> [0, 1], float32 (the pipelines' ``denormalize``)."""
    return (image.float() / 2 + 0.5).clamp(0, 1)


def rule_for(pipe) -> Optional[str]:
    """The rule of ``pipe``: its adapter's ``latent_rule``, else its class or nearest base in ``PIPELINES``;
    None when steer knows no rule for it."""
    from steer.pipelines.families import FAMILIES

    for cls in type(pipe).__mro__:
        if cls.__name__ in FAMILIES:
            module, name = FAMILIES[cls.__name__].split(":")
            rule = getattr(getattr(importlib.import_module(module), name), "latent_rule", None)
            if rule is not None:
                return rule
        if cls.__name__ in PIPELINES:
            return PIPELINES[cls.__name__]
    return None
