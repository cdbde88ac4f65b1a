"""FLUX.2 (``Flux2Pipeline``: FLUX.2-dev; ``Flux2KleinPipeline``: FLUX.2-klein; Black Forest Labs 2025,
https://bfl.ai/blog/flux-2) as a ``Process``: rectified flow on patchified latents.

The VAE latent (B, C, H/8, W/8) is patchified 2x2 to (B, 4C, H/16, W/16) and normalized by the VAE's
batch-norm statistics; the transformer reads those patches as a sequence (a plain flatten, with 4-axis
RoPE position ids). ``latent_shape`` is the patchified (4C, h, w) — what the pipeline's own
``latents=`` takes — and ``denoise`` flattens to the token sequence and back. Prompts are encoded once
with the pipeline's ``encode_prompt`` (the text encoder's hidden states at ``text_encoder_out_layers``,
stacked per token; Mistral-Small-3.1 with FLUX.2's system message for dev, Qwen3 for klein), padded
to ``max_sequence_length`` with no attention mask, as the pipeline does.

Guidance. ``Flux2Pipeline`` is guidance-distilled: ``guidance_scale`` goes to the guidance embedding,
one evaluation per latent, no negative prompt. ``Flux2KleinPipeline`` (base models) uses classifier-free
guidance (Ho & Salimans 2022) against an empty negative prompt when ``guidance_scale > 1``, here as one
batched call on [uncond, cond] (the pipeline makes two calls; the text lengths are equal, so this is
exact to rounding); step-distilled klein models (``is_distilled``) have no guidance. The σ schedule is
the pipeline's: ``sigmas = linspace(1, 1/S, S)`` (unless the scheduler uses ``use_flow_sigmas``) with
FLUX.2's empirical ``mu = compute_empirical_mu(seq, S)``, through a copy of the pipeline's scheduler;
the transformer gets t = σ (``timestep / 1000``); x̂0 = x − σ·v. ``decode``: de-normalize with the
batch-norm statistics, unpatchify, VAE-decode.

Extension: klein accepts a ``negative_prompt`` (the pipeline always uses ""; the default here is "").
Deviation: the chain runs in float32 between steps (the pipeline keeps the text encoder's dtype). Not
supported: reference-image conditioning / editing (``image=``), caption upsampling
(``caption_upsample_temperature``), ``prompt_embeds`` inputs, custom ``sigmas``, ``attention_kwargs``;
``Flux2KleinKVPipeline`` / ``Flux2KleinInpaintPipeline`` are other classes and have no adapter.
"""
from __future__ import annotations

import inspect
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from steer.errors import SteerError
from steer.pipelines import checks, decoding
from steer.pipelines.flow_schedule import flow_schedule
from steer.pipelines.guided import GuidedProcess, paired
from steer.types import Cond


def _default(pipe, option: str):
    return inspect.signature(pipe.__call__).parameters[option].default


class Flux2Process(GuidedProcess):
    """``Flux2Pipeline`` / ``Flux2KleinPipeline`` -> ``Process``. Options use diffusers' names and defaults
    (``guidance_scale=None`` and ``text_encoder_out_layers=None`` take the pipeline's own)."""

    name = "Flux2Process"
    latent_rule = "flux2"  # steer.pipelines.decoding: decode and steer.wrap share it

    def __init__(self, pipe, *, num_inference_steps: int = 50, guidance_scale: Optional[float] = None,
                 height: Optional[int] = None, width: Optional[int] = None, negative_prompt=None,
                 batch_size: Optional[int] = None, max_sequence_length: int = 512,
                 text_encoder_out_layers: Optional[tuple[int, ...]] = None):
        self.klein = any(c.__name__ == "Flux2KleinPipeline" for c in type(pipe).__mro__)
        self.distilled = self.klein and bool(pipe.config.get("is_distilled", False))
        guidance_scale = checks.check_guidance(guidance_scale)
        self._check_guidance_options(guidance_scale, negative_prompt)
        if guidance_scale is None:
            guidance_scale = 1.0 if self.distilled else _default(pipe, "guidance_scale")
        if self.klein and not self.distilled and negative_prompt is None:
            negative_prompt = ""  # Flux2KleinPipeline's fixed negative prompt
        self.transformer, self.vae = pipe.transformer, pipe.vae
        checks.bind_common(self, pipe, pipe.transformer, num_inference_steps=num_inference_steps,
                           batch_size=batch_size, guidance_scale=guidance_scale, negative_prompt=negative_prompt)
        self.max_sequence_length = checks.positive_int("max_sequence_length", max_sequence_length, allow_none=False)
        if text_encoder_out_layers is None:
            text_encoder_out_layers = _default(pipe, "text_encoder_out_layers")
        self.text_encoder_out_layers = tuple(int(k) for k in text_encoder_out_layers)
        factor = pipe.vae_scale_factor
        self.height, self.width = checks.image_size(
            self.name, pipe.default_sample_size, 2 * factor, height, width, pixels_per_sample=factor)
        h, w = self.height // (2 * factor), self.width // (2 * factor)  # patchified latent size
        self.latent_shape = (pipe.transformer.config.in_channels, h, w)  # (4C, h, w)
        self.img_ids = pipe._prepare_latent_ids(torch.empty(1, 1, h, w))[0].to(self.device)  # (h·w, 4)
        self.schedule = self._schedule(num_inference_steps, h * w)

    def _check_guidance_options(self, guidance_scale, negative_prompt) -> None:
        if not self.klein and negative_prompt is not None:
            raise ValueError(f"{self.name}: FLUX.2-dev is guidance-distilled (no classifier-free guidance), so "
                             f"negative_prompt has no effect here; leave it None")
        if self.distilled and (negative_prompt is not None or (guidance_scale is not None and guidance_scale > 1)):
            raise SteerError(f"{self.name}: this FLUX.2-klein model is step-distilled (is_distilled=True) and has no "
                             f"guidance; leave guidance_scale None (or <= 1) and negative_prompt None")

    def _schedule(self, num_inference_steps: int, seq: int):
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if self.pipe.scheduler.config.get("use_flow_sigmas", False):
            sigmas = None
        mu = compute_empirical_mu(image_seq_len=seq, num_steps=num_inference_steps)
        return flow_schedule(self.pipe.scheduler, num_inference_steps, device=self.device, sigmas=sigmas, mu=mu)

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds) and not self.klein  # klein passes guidance=None

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.klein and not self.distilled and self.guidance_scale > 1

    # ---- prepare ------------------------------------------------------------------------
    def _embed(self, prompts: list[str]) -> Tensor:
        embeds, _text_ids = self.pipe.encode_prompt(
            prompt=prompts, device=self.device, num_images_per_prompt=1, max_sequence_length=self.max_sequence_length,
            text_encoder_out_layers=self.text_encoder_out_layers)  # (P, L, 3·D), (P, L, 4)
        return embeds

    def _encode(self, prompts: list[str], negative: Optional[list[str]]) -> dict[str, Tensor]:
        positive = {"prompt_embeds": self._embed(prompts)}
        if not self.do_classifier_free_guidance:
            return positive
        return self.conditioning(positive, {"prompt_embeds": self._embed(negative)})

    # ---- denoise ------------------------------------------------------------------------
    def denoise(self, x: Tensor, i: int, cond: Cond) -> Tensor:
        x_in, cfg = self.cfg_batch(x, cond)  # (2B or B, 4C, h, w): [uncond, cond]
        n, channels, h, w = x_in.shape
        tokens = x_in.flatten(2).transpose(1, 2)  # (2B, h·w, 4C), the pipeline's _pack_latents
        timestep = self.schedule.timesteps[i].expand(n).to(x_in.dtype)  # (2B,) σ·1000
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full([n], cond.guidance_scale, device=x_in.device, dtype=torch.float32)  # (2B,)
        embeds = paired(cond, "prompt_embeds", cfg)  # (2B, L, 3·D)
        text_ids = self.pipe._prepare_text_ids(embeds[:1])[0].to(embeds.device)  # (L, 4)
        out = self.transformer(
            hidden_states=tokens, timestep=timestep / 1000, guidance=guidance, encoder_hidden_states=embeds,
            txt_ids=text_ids, img_ids=self.img_ids, return_dict=False,
        )[0][:, : h * w]  # (2B, h·w, 4C) velocity
        out = out.transpose(1, 2).reshape(n, channels, h, w)  # (2B, 4C, h, w)
        return self.guided(out, cond, cfg)  # (B, 4C, h, w)

    # ---- decode -------------------------------------------------------------------------
    def vae_latents(self, x0: Tensor) -> Tensor:
        """(B, 4C, h, w) normalized patches -> (B, C, 2h, 2w), the VAE's latent (what klein's
        ``output_type="latent"`` returns; ``steer.pipelines.decoding.flux2_vae_latents``)."""
        return decoding.flux2_vae_latents(self.pipe, x0)

    def decode(self, x0: Tensor) -> Tensor:
        checks.latents(self.name, x0, self.latent_shape)
        tokens = x0.flatten(2).transpose(1, 2)  # (B, h·w, 4C): the pipeline's layout, which the rule reads
        image = decoding.raw(self.latent_rule, self.pipe, tokens, self.height, self.width)  # (B, 3, H, W) in [-1, 1]
        return decoding.to_unit(image)
