"""PixArt-α / PixArt-Σ (``PixArtAlphaPipeline``, ``PixArtSigmaPipeline``) as a ``Process``.

Prompts are encoded once with the pipeline's ``encode_prompt`` (T5 token embeddings and their
attention mask, which the transformer's cross-attention uses). Classifier-free guidance (Ho &
Salimans 2022) is one batched call on [uncond, cond] (skipped when ``guidance_scale <= 1``). The
transformer predicts ε and a learned variance (Chen et al. 2023, "PixArt-α", following Nichol &
Dhariwal 2021); like the pipeline we keep the first half of the output channels (ε) after guidance.
PixArt-α at 1024 px (``sample_size == 128``) also embeds the resolution and aspect ratio
(``use_additional_conditions``); they are added here exactly as the pipeline adds them. The chain
is DDIM on the schedule read off ``pipe.scheduler.config`` (see ``ddim_schedule``: the
DPM-Solver the models ship with is replaced by DDIM, η = ``noise_level``).

Resolution binning (``use_resolution_binning``): as in diffusers, the requested size is generated
at the nearest aspect-ratio bin of the model's resolution and ``decode`` resizes and crops back.
The default ``None`` bins when the transformer's ``sample_size`` has a bin table (32/64/128, and 256
for Σ) and does not otherwise (diffusers raises); ``height``/``width`` are the generated size.
"""
from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch import Tensor

from steer.pipelines import checks
from steer.pipelines.ddim_schedule import ddim_schedule
from steer.pipelines.guided import GuidedProcess, paired
from steer.types import Cond


def aspect_ratio_bins(pipe) -> Optional[dict]:
    """The pipeline's aspect-ratio bin table for its transformer's ``sample_size`` (None if none)."""
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha as alpha
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_sigma as sigma

    tables = {128: alpha.ASPECT_RATIO_1024_BIN, 64: alpha.ASPECT_RATIO_512_BIN, 32: alpha.ASPECT_RATIO_256_BIN}
    if any(c.__name__ == "PixArtSigmaPipeline" for c in type(pipe).__mro__):
        tables[256] = sigma.ASPECT_RATIO_2048_BIN
    return tables.get(pipe.transformer.config.sample_size)


class PixArtProcess(GuidedProcess):
    """``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline`` -> ``Process``. Options use diffusers'
    names and defaults (``max_sequence_length=None`` takes the pipeline's own: 120 for α, 300 for Σ)."""

    name = "PixArtProcess"
    latent_rule = "scaled_shift"  # steer.pipelines.decoding: decode and steer.wrap share it

    def __init__(self, pipe, *, num_inference_steps: int = 20, guidance_scale: float = 4.5,
                 height: Optional[int] = None, width: Optional[int] = None, negative_prompt="",
                 batch_size: Optional[int] = None, max_sequence_length: Optional[int] = None,
                 clean_caption: bool = True, use_resolution_binning: Optional[bool] = None):
        self.transformer, self.vae = pipe.transformer, pipe.vae
        checks.bind_common(self, pipe, pipe.transformer, num_inference_steps=num_inference_steps,
                           batch_size=batch_size, guidance_scale=guidance_scale, negative_prompt=negative_prompt)
        self.clean_caption = bool(clean_caption)
        if max_sequence_length is None:
            max_sequence_length = inspect.signature(pipe.__call__).parameters["max_sequence_length"].default
        self.max_sequence_length = checks.positive_int("max_sequence_length", max_sequence_length, allow_none=False)
        config = pipe.transformer.config
        factor = pipe.vae_scale_factor
        height, width, orig = checks.resolution_bins(self.name, pipe, aspect_ratio_bins(pipe), height, width,
                                                     use_resolution_binning, config.sample_size * factor)
        self.height, self.width = checks.image_size(
            self.name, config.sample_size, factor * config.patch_size, height, width, pixels_per_sample=factor)
        self.orig_height, self.orig_width = orig or (self.height, self.width)  # what decode returns
        self.latent_shape = (config.in_channels, self.height // factor, self.width // factor)
        self.learned_sigma = config.out_channels is not None and config.out_channels // 2 == config.in_channels
        self.additional_conditions = bool(getattr(pipe.transformer, "use_additional_conditions", False))
        self.schedule = ddim_schedule(pipe.scheduler.config, num_inference_steps, device=self.device)

    # ---- prepare ------------------------------------------------------------------------
    def _encode(self, prompts: list[str], negative: Optional[list[str]]) -> dict[str, Tensor]:
        embeds, mask, negative_embeds, negative_mask = self.pipe.encode_prompt(
            prompts, self.do_classifier_free_guidance, negative_prompt=negative, num_images_per_prompt=1,
            device=self.device, clean_caption=self.clean_caption,
            max_sequence_length=self.max_sequence_length)  # (P, L, D), (P, L)
        return self.conditioning({"prompt_embeds": embeds, "prompt_attention_mask": mask},
                                 {"prompt_embeds": negative_embeds, "prompt_attention_mask": negative_mask})

    # ---- denoise ------------------------------------------------------------------------
    def denoise(self, x: Tensor, i: int, cond: Cond) -> Tensor:
        x_in, cfg = self.cfg_batch(x, cond)  # (2B or B, C, h, w): [uncond, cond]
        n = x_in.shape[0]
        timestep = self.schedule.timesteps[i].reshape(1).expand(n)  # (2B,)
        out = self.transformer(
            x_in, encoder_hidden_states=paired(cond, "prompt_embeds", cfg),
            encoder_attention_mask=paired(cond, "prompt_attention_mask", cfg),
            timestep=timestep, added_cond_kwargs=self._added_conditions(n), return_dict=False,
        )[0]  # (2B, 2C, h, w) with learned sigma
        out = self.guided(out, cond, cfg)  # (B, 2C, h, w)
        return out.chunk(2, dim=1)[0] if self.learned_sigma else out  # (B, C, h, w) ε

    def _added_conditions(self, n: int) -> dict:
        if not self.additional_conditions:
            return {"resolution": None, "aspect_ratio": None}
        kw = dict(device=self.device, dtype=self.dtype)
        resolution = torch.tensor([self.height, self.width]).repeat(n, 1).to(**kw)  # (n, 2)
        aspect_ratio = torch.tensor([float(self.height / self.width)]).repeat(n, 1).to(**kw)  # (n, 1)
        return {"resolution": resolution, "aspect_ratio": aspect_ratio}

    # ---- decode -------------------------------------------------------------------------
    def decode(self, x0: Tensor) -> Tensor:
        binned = (self.orig_height, self.orig_width) != (self.height, self.width)
        crop_to = (self.pipe.image_processor, self.orig_width, self.orig_height) if binned else None
        return checks.vae_decode(self.name, self.vae, x0, self.latent_shape, crop_to)  # (B, 3, H, W) in [0, 1]

    def encode(self, images: Tensor, generator=None) -> Tensor:
        """Images in [0, 1] at the process' size -> x0 = (z − shift_factor) · scaling_factor (inverse of ``decode``)."""
        return checks.vae_encode(self.name, self.vae, images, self.latent_shape, generator)
