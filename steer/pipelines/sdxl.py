"""Stable Diffusion XL (``StableDiffusionXLPipeline``) as a ``Process``.

Same chain, guidance and dtype rules as ``sd.StableDiffusionProcess``; what SDXL adds is its
conditioning, all built by the pipeline's own code: ``encode_prompt`` runs both text encoders
(penultimate hidden states of each, concatenated; pooled projection of the second; zero negative
embeddings when ``force_zeros_for_empty_prompt`` and no negative prompt), and ``_get_add_time_ids``
builds the micro-conditioning (original size, crop (0, 0), target size = the generated size).
``decode`` follows diffusers (``steer.pipelines.decoding.sdxl``, the rule steer.wrap uses too):
``latents_mean``/``latents_std`` when the VAE config has them, and the fp16 VAE is upcast to float32
for decoding when ``force_upcast`` is set.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from steer.pipelines import checks, decoding
from steer.pipelines.guided import paired
from steer.pipelines.sd import StableDiffusionProcess
from steer.types import Cond


class StableDiffusionXLProcess(StableDiffusionProcess):
    """``StableDiffusionXLPipeline`` -> ``Process``. Options use diffusers' names and defaults
    (SDXL's default ``guidance_scale`` is 5.0)."""

    name = "StableDiffusionXLProcess"
    latent_rule = "sdxl"  # steer.pipelines.decoding: mean/std, fp16 VAE upcast when force_upcast

    def __init__(self, pipe, *, guidance_scale: float = 5.0, **options):
        super().__init__(pipe, guidance_scale=guidance_scale, **options)

    def _encode(self, prompts: list[str], negative: Optional[list[str]]) -> dict[str, Tensor]:
        embeds, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompts, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            negative_prompt=negative)  # (P, L, D), (P, D_pool)
        time_ids = self._time_ids(pooled).repeat(len(prompts), 1)  # (P, 6)
        return self.conditioning({"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "add_time_ids": time_ids},
                                 {"prompt_embeds": negative_embeds, "pooled_prompt_embeds": negative_pooled,
                                  "add_time_ids": time_ids})

    def _time_ids(self, pooled: Tensor) -> Tensor:
        encoder_2 = self.pipe.text_encoder_2
        projection_dim = int(pooled.shape[-1]) if encoder_2 is None else encoder_2.config.projection_dim
        size = (self.height, self.width)
        ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=pooled.dtype,
                                          text_encoder_projection_dim=projection_dim)  # (1, 6)
        return ids.to(self.device)

    def _unet_inputs(self, cond: Cond, cfg: bool) -> dict:
        return {
            "encoder_hidden_states": paired(cond, "prompt_embeds", cfg),
            "added_cond_kwargs": {"text_embeds": paired(cond, "pooled_prompt_embeds", cfg),
                                  "time_ids": paired(cond, "add_time_ids", cfg)},
        }

    def decode(self, x0: Tensor) -> Tensor:
        checks.latents(self.name, x0, self.latent_shape)
        return decoding.to_unit(decoding.raw(self.latent_rule, self.pipe, x0))  # (B, 3, H, W) in [0, 1]

    def _unscale(self, z: Tensor) -> Tensor:
        return decoding.sdxl_unscale(self.vae.config, z)

    def _scale(self, z: Tensor) -> Tensor:
        """The inverse of ``_unscale``: a VAE latent -> the UNet's latent space."""
        config = self.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is None or std is None:
            return z * config.scaling_factor
        mean = torch.tensor(mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
        std = torch.tensor(std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
        return (z - mean) * config.scaling_factor / std

    def encode(self, images: Tensor, generator=None) -> Tensor:
        """Images in [0, 1] -> latents (the inverse of ``decode``; the VAE runs in float32 when it must upcast)."""
        vae = self.vae
        upcast = decoding.needs_upcast(vae)
        if upcast:
            vae.to(torch.float32)
        try:
            return checks.vae_encode(self.name, vae, images, self.latent_shape, generator, unscale=self._scale)
        finally:
            if upcast:
                vae.to(torch.float16)
