"""Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``) as a ``Process``: rectified flow.

Prompts are encoded once with the pipeline's own ``encode_prompt`` (two CLIP encoders for the token
embeddings and the pooled projection, T5 for the long context; with ``text_encoder_3=None`` the T5
part is zeros, as diffusers does). Classifier-free guidance (Ho & Salimans 2022) is one batched
transformer call on [uncond, cond] (skipped when ``guidance_scale <= 1``, as diffusers does). The
transformer is given ``t`` = σ·1000 as the pipeline passes it. The chain is the rectified-flow ODE /
Flow-GRPO SDE on the σ schedule read off the pipeline's own ``FlowMatchEulerDiscreteScheduler``
(``shift``, or ``mu`` from the image sequence length when it uses dynamic shifting, exactly as the
pipeline computes it); x̂0 = x − σ·v (Esser et al. 2024, "Scaling Rectified Flow Transformers").

Not supported: skip-layer guidance, IP-adapters, ``clip_skip``.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from steer.pipelines import checks
from steer.pipelines.flow_schedule import flow_schedule, mu_from_config
from steer.pipelines.guided import GuidedProcess, paired
from steer.types import Cond


class StableDiffusion3Process(GuidedProcess):
    """``StableDiffusion3Pipeline`` -> ``Process``. Options use diffusers' names and defaults."""

    name = "StableDiffusion3Process"
    latent_rule = "scaled_shift"  # steer.pipelines.decoding: decode and steer.wrap share it

    def __init__(self, pipe, *, num_inference_steps: int = 28, guidance_scale: float = 7.0,
                 height: Optional[int] = None, width: Optional[int] = None, negative_prompt=None,
                 batch_size: Optional[int] = None, max_sequence_length: int = 256, mu: Optional[float] = None):
        self.transformer, self.vae = pipe.transformer, pipe.vae
        checks.bind_common(self, pipe, pipe.transformer, num_inference_steps=num_inference_steps,
                           batch_size=batch_size, guidance_scale=guidance_scale, negative_prompt=negative_prompt)
        self.max_sequence_length = checks.positive_int("max_sequence_length", max_sequence_length, allow_none=False)
        factor, patch = pipe.vae_scale_factor, pipe.transformer.config.patch_size
        self.height, self.width = checks.image_size(
            self.name, pipe.default_sample_size, factor * patch, height, width, pixels_per_sample=factor)
        h, w = self.height // factor, self.width // factor
        self.latent_shape = (pipe.transformer.config.in_channels, h, w)
        if mu is None and pipe.scheduler.config.get("use_dynamic_shifting", False):
            mu = mu_from_config(pipe.scheduler.config, (h // patch) * (w // patch), default_max_shift=1.16)
        self.schedule = flow_schedule(pipe.scheduler, num_inference_steps, device=self.device, mu=mu)

    # ---- prepare ------------------------------------------------------------------------
    def _encode(self, prompts: list[str], negative: Optional[list[str]]) -> dict[str, Tensor]:
        embeds, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=self.do_classifier_free_guidance, negative_prompt=negative,
            max_sequence_length=self.max_sequence_length)  # (P, 77 + L, D), (P, D_pooled)
        return self.conditioning({"prompt_embeds": embeds, "pooled_prompt_embeds": pooled},
                                 {"prompt_embeds": negative_embeds, "pooled_prompt_embeds": negative_pooled})

    # ---- denoise ------------------------------------------------------------------------
    def denoise(self, x: Tensor, i: int, cond: Cond) -> Tensor:
        x_in, cfg = self.cfg_batch(x, cond)  # (2B or B, C, h, w): [uncond, cond]
        timestep = self.schedule.timesteps[i].expand(x_in.shape[0])  # (2B,) t = σ·1000
        out = self.transformer(
            hidden_states=x_in, timestep=timestep,
            encoder_hidden_states=paired(cond, "prompt_embeds", cfg),
            pooled_projections=paired(cond, "pooled_prompt_embeds", cfg),
            return_dict=False,
        )[0]  # (2B, C, h, w) velocity
        return self.guided(out, cond, cfg)  # (B, C, h, w)

    # ---- decode -------------------------------------------------------------------------
    def decode(self, x0: Tensor) -> Tensor:
        return checks.vae_decode(self.name, self.vae, x0, self.latent_shape)  # (B, 3, H, W) in [0, 1]

    def encode(self, images: Tensor, generator=None) -> Tensor:
        """Images in [0, 1] at the process' size -> x0 = (z − shift_factor) · scaling_factor (inverse of ``decode``)."""
        return checks.vae_encode(self.name, self.vae, images, self.latent_shape, generator)
