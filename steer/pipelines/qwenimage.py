"""Qwen-Image (``QwenImagePipeline``; Qwen Team 2025, "Qwen-Image Technical Report") as a ``Process``.

An MMDiT on rectified flow. The transformer sees 2x2 patches of the VAE latent as a sequence, so
latents are *packed* as the pipeline's own ``latents=`` takes them: ``latent_shape`` is
(h/2 · w/2, 4·z_dim) and ``decode`` unpacks before the VAE. Prompts are encoded once with the
pipeline's ``encode_prompt`` (Qwen2.5-VL's last hidden state after the chat template's 34 system
tokens, and its attention mask).

Guidance is *true* classifier-free guidance (Ho & Salimans 2022), as in diffusers: on iff
``true_cfg_scale > 1`` and a ``negative_prompt`` is given (``" "`` is enough), combined as
ε_u + s·(ε_c − ε_u) and then rescaled per token to the conditional prediction's norm,
``comb · ‖ε_c‖ / ‖comb‖`` over the channel dim. Unlike the pipeline (two transformer calls) the
two branches are one batched call on [uncond, cond]; their text embeddings are zero-padded to a
common length with the attention mask marking the padding (the transformer's RoPE and masked
attention make that exact up to float rounding). ``guidance_scale`` in diffusers' Qwen-Image is
the guidance-distilled embedding, which released Qwen-Image transformers do not have (the pipeline
ignores it), so here it is an error that names ``true_cfg_scale``.

The σ schedule is the pipeline's: ``sigmas = linspace(1, 1/S, S)`` shifted by
``mu = calculate_shift(image_seq_len)`` with the scheduler config's bounds, through a copy of the
pipeline's own scheduler (exponential time shift, ``shift_terminal``); the transformer gets
t = σ (``timestep / 1000``); x̂0 = x − σ·v. ``init_noise`` draws x_T as the pipeline's ``prepare_latents``
(N(0, I) on (n, 1, z, h, w), then packed), so one seed gives the pipeline's own x_T. ``decode`` (the
``qwenimage`` rule of ``steer.pipelines.decoding``): unpack to (B, z, 1, h, w), de-normalize with the
VAE's ``latents_mean`` / ``latents_std``, decode the single frame.

Deviation: the chain runs in float32 between steps (the pipeline keeps its latents in the text
encoder's dtype); in float32 the two agree to rounding. Not supported: guidance-distilled
transformers (``guidance_embeds=True``), ``prompt_embeds`` inputs, custom ``sigmas``,
``attention_kwargs``; the edit / img2img / inpaint / ControlNet / layered Qwen-Image pipelines are
other classes and have no adapter.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from steer.errors import SteerError
from steer.pipelines import checks, decoding
from steer.pipelines.base import guide, standard_normal
from steer.pipelines.flow_schedule import flow_schedule, mu_from_config
from steer.pipelines.guided import GuidedProcess, paired
from steer.types import Cond

MAX_SEQUENCE_LENGTH = 1024  # QwenImagePipeline.check_inputs


class QwenImageProcess(GuidedProcess):
    """``QwenImagePipeline`` -> ``Process``. Options use diffusers' names and defaults."""

    name = "QwenImageProcess"
    latent_rule = "qwenimage"  # steer.pipelines.decoding: decode and steer.wrap share it

    def __init__(self, pipe, *, num_inference_steps: int = 50, true_cfg_scale: float = 4.0,
                 guidance_scale: Optional[float] = None, height: Optional[int] = None, width: Optional[int] = None,
                 negative_prompt=None, batch_size: Optional[int] = None, max_sequence_length: int = 512):
        if pipe.transformer.config.guidance_embeds:
            raise ValueError(f"{self.name}: guidance-distilled Qwen-Image transformers (guidance_embeds=True) are "
                             f"not supported; use a transformer with guidance_embeds=False")
        if guidance_scale is not None:
            raise SteerError(f"{self.name}: guidance_scale is diffusers' guidance-distilled embedding, which this "
                             f"transformer does not have; for classifier-free guidance give a negative_prompt "
                             f"(' ' is enough) and true_cfg_scale (default 4.0) via "
                             f"steer.pipelines.from_pipe(pipe, true_cfg_scale=..., negative_prompt=...)")
        self.transformer, self.vae = pipe.transformer, pipe.vae
        checks.bind_common(self, pipe, pipe.transformer, num_inference_steps=num_inference_steps,
                           batch_size=batch_size, negative_prompt=negative_prompt)
        # Cond.guidance_scale (what GuidedProcess.prepare records) is the CFG scale: true_cfg_scale here
        self.true_cfg_scale = self.guidance_scale = _cfg_scale(4.0 if true_cfg_scale is None else true_cfg_scale)
        self.max_sequence_length = checks.positive_int("max_sequence_length", max_sequence_length, allow_none=False,
                                                       maximum=MAX_SEQUENCE_LENGTH)
        factor = pipe.vae_scale_factor
        self.height, self.width = checks.image_size(
            self.name, pipe.default_sample_size, 2 * factor, height, width, pixels_per_sample=factor)
        h, w = self.height // factor, self.width // factor  # unpacked latent size
        seq = (h // 2) * (w // 2)
        self.latent_shape = (seq, pipe.transformer.config.in_channels)  # (h/2·w/2, 4·z_dim)
        self.img_shape = (1, h // 2, w // 2)  # (frames, rows, cols) of patches, for the transformer's RoPE
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = mu_from_config(pipe.scheduler.config, seq, default_max_shift=1.15)
        self.schedule = flow_schedule(pipe.scheduler, num_inference_steps, device=self.device, sigmas=sigmas, mu=mu)

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.true_cfg_scale > 1 and self.negative_prompt is not None  # as the pipeline's do_true_cfg

    def init_noise(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """x_T drawn as ``QwenImagePipeline.prepare_latents`` draws it, N(0, I) on (n, 1, z, h, w), then packed
        (n, h/2·w/2, 4z): the same generator gives the pipeline's own x_T."""
        z, (_, rows, cols) = self.latent_shape[1] // 4, self.img_shape
        x = standard_normal((n, 1, z, 2 * rows, 2 * cols), generator)  # (n, 1, z, h, w)
        return self.pipe._pack_latents(x, n, z, 2 * rows, 2 * cols).to(self.device)  # (n, h/2·w/2, 4z)

    # ---- prepare ------------------------------------------------------------------------
    def _embed(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        embeds, mask = self.pipe.encode_prompt(prompt=prompts, device=self.device, num_images_per_prompt=1,
                                               max_sequence_length=self.max_sequence_length)  # (P, L, D), (P, L) | None
        if mask is None:  # encode_prompt drops an all-ones mask
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return embeds, mask

    def _encode(self, prompts: list[str], negative: Optional[list[str]]) -> dict[str, Tensor]:
        embeds, mask = self._embed(prompts)
        if not self.do_classifier_free_guidance:
            return {"prompt_embeds": embeds, "prompt_embeds_mask": mask}
        neg_embeds, neg_mask = self._embed(negative)
        length = max(embeds.shape[1], neg_embeds.shape[1])  # one [uncond, cond] batch needs one text length
        positive = {"prompt_embeds": _pad(embeds, length), "prompt_embeds_mask": _pad(mask, length)}
        return self.conditioning(positive, {"prompt_embeds": _pad(neg_embeds, length),
                                            "prompt_embeds_mask": _pad(neg_mask, length)})

    # ---- denoise ------------------------------------------------------------------------
    def denoise(self, x: Tensor, i: int, cond: Cond) -> Tensor:
        x_in, cfg = self.cfg_batch(x, cond)  # (2B or B, seq, 4z): [uncond, cond]
        n = x_in.shape[0]
        timestep = self.schedule.timesteps[i].expand(n).to(x_in.dtype)  # (2B,) σ·1000
        mask = paired(cond, "prompt_embeds_mask", cfg)  # (2B, L)
        out = self.transformer(
            hidden_states=x_in, timestep=timestep / 1000, guidance=None,
            encoder_hidden_states=paired(cond, "prompt_embeds", cfg),
            encoder_hidden_states_mask=None if bool(mask.all()) else mask,  # None when nothing is padding, as diffusers
            img_shapes=[[self.img_shape]] * n, return_dict=False,
        )[0]  # (2B, seq, 4z) velocity
        return self.guided(out, cond, cfg)  # (B, seq, 4z)

    def guided(self, out: Tensor, cond: Cond, cfg: bool) -> Tensor:
        """True CFG, then each token rescaled to the conditional prediction's norm (as QwenImagePipeline)."""
        out = out.float()
        if not cfg:
            return out
        uncond, text = out.chunk(2)
        if cond.detach_uncond:
            uncond = uncond.detach()
        comb = guide(uncond, text, cond.guidance_scale)  # (B, seq, 4z)
        return comb * (torch.norm(text, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))

    # ---- decode -------------------------------------------------------------------------
    def decode(self, x0: Tensor) -> Tensor:
        checks.latents(self.name, x0, self.latent_shape)
        image = decoding.raw(self.latent_rule, self.pipe, x0, self.height, self.width)  # (B, 3, H, W) in [-1, 1]
        return decoding.to_unit(image)


def _cfg_scale(value) -> float:
    try:
        return checks.check_guidance(value)
    except SteerError as e:
        raise SteerError(str(e).replace("guidance_scale", "true_cfg_scale", 1)) from None


def _pad(t: Tensor, length: int) -> Tensor:
    """Zero-pad dim 1 of ``t`` (embeddings or mask) to ``length``, as encode_prompt pads within a batch."""
    if t.shape[1] == length:
        return t
    pad = t.new_zeros((t.shape[0], length - t.shape[1], *t.shape[2:]))
    return torch.cat([t, pad], dim=1)
