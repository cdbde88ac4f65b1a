"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``) as a ``Process``; ε- and v-prediction.

Prompts are encoded once with the pipeline's own ``encode_prompt``; classifier-free guidance
(Ho & Salimans 2022) is one batched UNet call on [uncond, cond] combined with ``guide`` (skipped
when ``guidance_scale <= 1``, as diffusers does). The chain is DDIM on the schedule read off
``pipe.scheduler.config`` (see ``ddim_schedule``: a pipeline shipped with PNDM/Euler/... is sampled
with DDIM). Latents live in float32; the UNet and VAE run in the pipeline's dtype.

Not supported (clear errors): guidance-distilled UNets (``time_cond_proj_dim``, e.g. LCM),
``guidance_rescale``, IP-adapters.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from steer.pipelines import checks, decoding
from steer.pipelines.guided import GuidedProcess, paired
from steer.pipelines.ddim_schedule import ddim_schedule
from steer.types import Cond


class StableDiffusionProcess(GuidedProcess):
    """``StableDiffusionPipeline`` -> ``Process``. Options use diffusers' names and defaults."""

    name = "StableDiffusionProcess"
    latent_rule = "scaled"  # steer.pipelines.decoding: decode and steer.wrap share it

    def __init__(self, pipe, *, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 height: Optional[int] = None, width: Optional[int] = None,
                 negative_prompt=None, batch_size: Optional[int] = None):
        if getattr(pipe.unet.config, "time_cond_proj_dim", None) is not None:
            raise ValueError(f"{self.name}: guidance-distilled UNets (time_cond_proj_dim set, e.g. LCM) are not "
                             f"supported; use a standard Stable Diffusion UNet")
        self.unet, self.vae = pipe.unet, pipe.vae
        checks.bind_common(self, pipe, pipe.unet, num_inference_steps=num_inference_steps, batch_size=batch_size,
                           guidance_scale=guidance_scale, negative_prompt=negative_prompt)
        factor = pipe.vae_scale_factor
        self.height, self.width = checks.image_size(
            self.name, pipe.unet.config.sample_size, factor, height, width, pixels_per_sample=factor)
        self.latent_shape = (pipe.unet.config.in_channels, self.height // factor, self.width // factor)
        self.schedule = ddim_schedule(pipe.scheduler.config, num_inference_steps, device=self.device)

    # ---- prepare ------------------------------------------------------------------------
    def _encode(self, prompts: list[str], negative: Optional[list[str]]) -> dict[str, Tensor]:
        embeds, negative_embeds = self.pipe.encode_prompt(
            prompts, self.device, 1, self.do_classifier_free_guidance, negative)  # (P, L, D) each
        return self.conditioning({"prompt_embeds": embeds}, {"prompt_embeds": negative_embeds})

    # ---- denoise ------------------------------------------------------------------------
    def denoise(self, x: Tensor, i: int, cond: Cond) -> Tensor:
        x_in, cfg = self.cfg_batch(x, cond)  # (2B or B, C, h, w): [uncond, cond]
        t = self.schedule.timesteps[i]
        out = self.unet(x_in, t, return_dict=False, **self._unet_inputs(cond, cfg))[0]
        return self.guided(out, cond, cfg)  # (B, C, h, w)

    def _unet_inputs(self, cond: Cond, cfg: bool) -> dict:
        return {"encoder_hidden_states": paired(cond, "prompt_embeds", cfg)}

    # ---- decode -------------------------------------------------------------------------
    def decode(self, x0: Tensor) -> Tensor:
        checks.latents(self.name, x0, self.latent_shape)
        return decoding.to_unit(decoding.raw(self.latent_rule, self.pipe, x0))  # (B, 3, H, W) in [0, 1]


    def encode(self, images: Tensor, generator=None) -> Tensor:
        """Images in [0, 1] -> x0 = scaling_factor · z, z a sample of the VAE posterior (the inverse of ``decode``)."""
        return checks.vae_encode(self.name, self.vae, images, self.latent_shape, generator)
