"""FLUX.1 (``FluxPipeline``) as a ``Process``: rectified flow on packed latents.

FLUX's transformer sees the latent image as a sequence of 2x2 patches: latents are *packed*,
(B, C, h, w) -> (B, h/2 · w/2, 4C), so ``latent_shape`` is (seq, channels) and ``decode`` unpacks
before the VAE. Prompts are encoded once with the pipeline's ``encode_prompt`` (CLIP pooled
embedding + T5 token embeddings, text ids). Dev-type models (``guidance_embeds=True``) are
guidance-distilled: ``guidance_scale`` goes to the guidance embedding and there is no CFG batch,
so a step costs one evaluation per latent; schnell-type models have no guidance input at all. The σ
schedule is FluxPipeline's: ``sigmas = linspace(1, 1/S, S)`` (unless the scheduler uses
``use_flow_sigmas``) shifted by ``mu = calculate_shift(seq)`` (Esser et al. 2024, §5.3.2) through
the pipeline's own scheduler; the transformer gets t = σ (``timestep / 1000``). x̂0 = x − σ·v.

Not supported: true CFG (``true_cfg_scale`` with a negative prompt), IP-adapters.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from steer.pipelines import checks, decoding
from steer.pipelines.base import Process
from steer.pipelines.flow_schedule import flow_schedule, mu_from_config
from steer.types import Cond


class FluxProcess(Process):
    """``FluxPipeline`` -> ``Process``. Options use diffusers' names and defaults."""

    name = "FluxProcess"
    latent_rule = "packed"  # steer.pipelines.decoding: decode and steer.wrap share it

    def __init__(self, pipe, *, num_inference_steps: int = 28, guidance_scale: float = 3.5,
                 height: Optional[int] = None, width: Optional[int] = None, negative_prompt=None,
                 batch_size: Optional[int] = None, max_sequence_length: int = 512):
        if negative_prompt is not None:
            raise ValueError(f"{self.name}: FLUX is guidance-distilled (no classifier-free guidance), so "
                             f"negative_prompt has no effect here; leave it None")
        self.transformer, self.vae = pipe.transformer, pipe.vae
        checks.bind_common(self, pipe, pipe.transformer, num_inference_steps=num_inference_steps,
                           batch_size=batch_size, guidance_scale=guidance_scale)
        self.max_sequence_length = checks.positive_int("max_sequence_length", max_sequence_length, allow_none=False)
        factor = pipe.vae_scale_factor
        self.height, self.width = checks.image_size(
            self.name, pipe.default_sample_size, 2 * factor, height, width, pixels_per_sample=factor)
        h, w = self.height // factor, self.width // factor  # unpacked latent size
        seq = (h // 2) * (w // 2)
        self.latent_shape = (seq, pipe.transformer.config.in_channels)
        self.img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, self.dtype)  # (seq, 3)
        self.schedule = self._schedule(num_inference_steps, seq)

    def _schedule(self, num_inference_steps: int, seq: int):
        config = self.pipe.scheduler.config
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if config.get("use_flow_sigmas", False):
            sigmas = None
        mu = mu_from_config(config, seq, default_max_shift=1.15)  # ignored unless use_dynamic_shifting
        return flow_schedule(self.pipe.scheduler, num_inference_steps, device=self.device, sigmas=sigmas, mu=mu)

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    # ---- prepare ------------------------------------------------------------------------
    def prepare(self, prompts: Sequence[str] | str) -> Cond:
        prompts = checks.prompt_list(self.name, prompts)
        with torch.no_grad():
            embeds, pooled, _text_ids = self.pipe.encode_prompt(
                prompt=prompts, prompt_2=None, device=self.device, num_images_per_prompt=1,
                max_sequence_length=self.max_sequence_length)  # (P, L, D), (P, D_pooled), (L, 3)
        return Cond(prompts=tuple(prompts), tensors={"prompt_embeds": embeds, "pooled_prompt_embeds": pooled},
                    guidance_scale=self.guidance_scale)

    # ---- denoise ------------------------------------------------------------------------
    def denoise(self, x: Tensor, i: int, cond: Cond) -> Tensor:
        x_in = x.to(self.dtype)  # (B, seq, 4C)
        n = x_in.shape[0]
        timestep = self.schedule.timesteps[i].expand(n).to(self.dtype)  # (B,) σ·1000
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full([n], cond.guidance_scale, device=x_in.device, dtype=torch.float32)  # (B,)
        embeds = cond.tensors["prompt_embeds"]
        text_ids = torch.zeros(embeds.shape[1], 3, device=embeds.device, dtype=self.img_ids.dtype)  # (L, 3) as encode_prompt
        return self.transformer(
            hidden_states=x_in, timestep=timestep / 1000, guidance=guidance,
            pooled_projections=cond.tensors["pooled_prompt_embeds"], encoder_hidden_states=embeds,
            txt_ids=text_ids, img_ids=self.img_ids, return_dict=False,
        )[0].float()  # (B, seq, 4C) velocity

    # ---- decode -------------------------------------------------------------------------
    def unpack(self, x: Tensor) -> Tensor:
        """(B, seq, 4C) packed latents -> (B, C, h, w)."""
        return self.pipe._unpack_latents(x, self.height, self.width, self.pipe.vae_scale_factor)

    def decode(self, x0: Tensor) -> Tensor:
        checks.latents(self.name, x0, self.latent_shape)
        image = decoding.raw(self.latent_rule, self.pipe, x0, self.height, self.width)  # (B, 3, H, W) in [-1, 1]
        return decoding.to_unit(image)
