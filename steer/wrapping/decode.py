"""Latents -> images for ``steer.wrap``: one small rule per latent layout, keyed by pipeline class.

A wrapped pipeline runs its own ``__call__`` with ``output_type="latent"``; steer then needs to turn
its latents (the final ones, and the x̂0 predictions FK scores) into images exactly as the pipeline's
own decode does. Each rule below is the decode line of the pipelines listed for it (read from
diffusers 0.42), nothing more:

================  ===================================================  ==========================================
rule              VAE input z from latents x                           pipelines
================  ===================================================  ==========================================
``scaled``        z = x / scaling_factor                               SD 1.x/2.x (+ img2img, ControlNet), AuraFlow,
                                                                       CogView3-Plus, CogView4, HunyuanDiT, PixArt,
                                                                       Sana, Sana-Sprint, Kolors
``scaled_shift``  z = x / scaling_factor + shift_factor                SD3 (+ img2img), Lumina2
``sdxl``          z = x·std / scaling_factor + mean where the VAE has  SDXL (+ img2img, ControlNet)
                  ``latents_mean`` / ``latents_std``, else ``scaled``
``packed``        FLUX's ``_unpack_latents`` (B, h·w/4, 4C) ->         FLUX.1 (+ img2img)
                  (B, C, h, w), then ``scaled_shift``
================  ===================================================  ==========================================

``LatentDecoder.raw`` gives the VAE's output in [-1, 1] (what the pipeline's ``image_processor``
post-processes); ``decode`` gives images in [0, 1] for rewards (the ``Process.decode`` contract,
so ``steer.scoring`` scores through it). A pipeline whose class (or a base class) is not in
``RULES`` is refused with one line; ``steer.wrap(..., decode=fn)`` supplies a rule of one's own
(``fn(latents) -> images in [-1, 1]``).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from steer.errors import SteerError

RULES: dict[str, str] = {
    **dict.fromkeys(("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionControlNetPipeline",
                     "StableDiffusionControlNetImg2ImgPipeline", "AuraFlowPipeline", "CogView3PlusPipeline",
                     "CogView4Pipeline", "HunyuanDiTPipeline", "PixArtAlphaPipeline", "PixArtSigmaPipeline",
                     "SanaPipeline", "SanaSprintPipeline", "KolorsPipeline"), "scaled"),
    **dict.fromkeys(("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "Lumina2Pipeline"), "scaled_shift"),
    **dict.fromkeys(("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                     "StableDiffusionXLControlNetPipeline"), "sdxl"),
    **dict.fromkeys(("FluxPipeline", "FluxImg2ImgPipeline"), "packed"),
}


def rule_for(pipe) -> Optional[str]:
    """The decode rule of ``pipe``'s class or its nearest base class in ``RULES``; None if unknown."""
    return next((RULES[c.__name__] for c in type(pipe).__mro__ if c.__name__ in RULES), None)


class LatentDecoder:
    """The pipeline's latents -> images; ``batch_size`` None (one decoder call per scoring batch)."""

    batch_size = None

    def __init__(self, pipe, rule: str, custom: Optional[Callable[[Tensor], Tensor]] = None,
                 height: Optional[int] = None, width: Optional[int] = None):
        self.pipe, self.rule, self.custom, self.height, self.width = pipe, rule, custom, height, width
        self.vae = getattr(pipe, "vae", None)

    def raw(self, x: Tensor) -> Tensor:
        """Latents (B, ...) -> the VAE's images (B, 3, H, W), about [-1, 1]."""
        if self.custom is not None:
            return self.custom(x)
        cfg = self.vae.config
        if self.rule == "packed":
            x = self.pipe._unpack_latents(x, self.height, self.width, self.pipe.vae_scale_factor)  # (B, C, h, w)
        z = x.to(self.vae.dtype)
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if self.rule == "sdxl" and mean is not None and std is not None:
            view = (1, len(mean), 1, 1)
            z = z * torch.tensor(std).view(view).to(z) / cfg.scaling_factor + torch.tensor(mean).view(view).to(z)
        else:
            z = z / cfg.scaling_factor
        if self.rule in ("scaled_shift", "packed"):
            z = z + cfg.shift_factor
        return self.vae.decode(z, return_dict=False)[0]

    def decode(self, x: Tensor) -> Tensor:
        """Latents -> images (B, 3, H, W) in [0, 1], float32 (what rewards read)."""
        return to_unit(self.raw(x))


def to_unit(raw: Tensor) -> Tensor:
    """VAE output in [-1, 1] -> [0, 1], float32 (the pipelines' ``denormalize``)."""
    return (raw.float() / 2 + 0.5).clamp(0, 1)


def decoder_for(pipe, decode: Optional[Callable] = None, **size) -> LatentDecoder:
    """The ``LatentDecoder`` of ``pipe`` (``decode`` overrides the table), or a one-line ``SteerError``."""
    if decode is not None:
        if not callable(decode):
            raise SteerError(f"steer.wrap: decode must be a callable latents -> images in [-1, 1], got "
                             f"{type(decode).__name__}")
        return LatentDecoder(pipe, "custom", decode, **size)
    rule = rule_for(pipe)
    if rule is None:
        raise SteerError(f"steer.wrap: no latents->image rule for {type(pipe).__name__} (unknown latent layout); "
                         f"pass decode=fn(latents) -> images in [-1, 1], or add the class to steer.wrap_decode.RULES")
    if getattr(pipe, "vae", None) is None:
        raise SteerError(f"steer.wrap: {type(pipe).__name__} has no vae to decode latents with; pass decode=fn")
    return LatentDecoder(pipe, rule, **size)
