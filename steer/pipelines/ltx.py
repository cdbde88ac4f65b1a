"""LTX-Video (``LTXPipeline``; HaCohen et al. 2024, "LTX-Video: Realtime Video Latent Diffusion") as
a ``Process``: rectified flow on packed video latents.

``LTXVideoTransformer3DModel`` sees the latent video as a token sequence: latents are *packed*,
(B, C, f, h, w) -> (B, f/p_t · h/p · w/p, C·p_t·p²) exactly as ``LTXPipeline._pack_latents`` (p = 1 for
the released models), so ``latent_shape`` is (tokens, channels) and ``decode_video`` unpacks. Prompts
are encoded once with the pipeline's ``encode_prompt`` (T5 embeddings and their attention mask).
Classifier-free guidance (Ho & Salimans 2022; on when ``guidance_scale > 1``, negative prompt "" by
default) is one batched call on [uncond, cond], as the pipeline does, with its optional
``guidance_rescale`` (Lin et al. 2024, §3.4). The transformer gets the scheduler's t (σ·1000), the
latent (f, h, w) and ``rope_interpolation_scale`` = (temporal ratio / ``frame_rate``, spatial,
spatial). The σ schedule is LTXPipeline's: ``sigmas = linspace(1, 1/S, S)`` through the pipeline's
own ``FlowMatchEulerDiscreteScheduler`` with ``mu = calculate_shift(f·h·w)`` (and its
``shift_terminal``); x̂0 = x − σ·v. ``init_noise`` draws x_T as the pipeline's ``prepare_latents``
(N(0, I) on the unpacked (n, C, f, h, w), then packed), so one seed gives the pipeline's own x_T.
``decode_video`` (the ``ltx`` rule of ``steer.pipelines.decoding``) unpacks, denormalizes with the VAE's
``latents_mean`` / ``latents_std`` / ``scaling_factor`` and runs ``AutoencoderKLLTXVideo`` (with
``decode_timestep`` when its decoder is timestep-conditioned, LTX-Video 0.9.1+): frames
(B, F, 3, H, W); ``decode`` returns them as one frame grid per video (see ``steer.pipelines.video``).

Deviations: the denoiser input is cast to the transformer's dtype (diffusers: the text encoder's;
the same for every released checkpoint), guidance is combined in float32. ``decode_noise_scale``
must be 0: diffusers blends fresh noise into the latents before decoding, and steer's decode is
deterministic (decode(latents) == images).
Not supported: image/video conditioning (``LTXImageToVideoPipeline``, ``LTXConditionPipeline``),
custom ``timesteps``, ``attention_kwargs``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from steer.pipelines import checks, decoding
from steer.pipelines.base import standard_normal
from steer.pipelines.flow_schedule import flow_schedule, mu_from_config
from steer.pipelines.guided import paired
from steer.pipelines.video import VideoProcess, frame_count
from steer.types import Cond


def rescale_guidance(guided: Tensor, text: Tensor, phi: float) -> Tensor:
    """Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    §3.4): match the guided output's per-sample std to the conditional one's, mixed by ``phi``."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (text.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


class LTXProcess(VideoProcess):
    """``LTXPipeline`` -> ``Process``. Options use diffusers' names and defaults."""

    name = "LTXProcess"
    latent_rule = "ltx"  # steer.pipelines.decoding: decode_video and steer.wrap share it

    def __init__(self, pipe, *, num_inference_steps: int = 50, guidance_scale: float = 3.0,
                 guidance_rescale: float = 0.0, height: Optional[int] = None, width: Optional[int] = None,
                 num_frames: int = 161, frame_rate: float = 25, negative_prompt=None, batch_size: Optional[int] = None,
                 max_sequence_length: int = 128, decode_timestep: float = 0.0,
                 decode_noise_scale: Optional[float] = None, frame_layout="grid"):
        self.transformer, self.vae = pipe.transformer, pipe.vae
        checks.bind_common(self, pipe, pipe.transformer, num_inference_steps=num_inference_steps,
                           batch_size=batch_size, guidance_scale=guidance_scale, negative_prompt=negative_prompt)
        self.max_sequence_length = checks.positive_int("max_sequence_length", max_sequence_length, allow_none=False)
        if not 0 <= float(guidance_rescale) <= 1:
            raise ValueError(f"{self.name}: guidance_rescale={guidance_rescale!r} must be in [0, 1]")
        self.guidance_rescale = float(guidance_rescale)
        if isinstance(frame_rate, bool) or not isinstance(frame_rate, (int, float)) or not frame_rate > 0:
            raise ValueError(f"{self.name}: frame_rate={frame_rate!r} must be a positive number of frames per second")
        self.frame_rate = float(frame_rate)
        self.decode_timestep = float(decode_timestep)
        noise_scale = self.decode_timestep if decode_noise_scale is None else float(decode_noise_scale)
        if self.vae.config.timestep_conditioning and noise_scale != 0:
            raise ValueError(f"{self.name}: decode_noise_scale={noise_scale:g} blends fresh noise into the latents at "
                             f"decode and steer's decode is deterministic; pass decode_noise_scale=0")
        spatial, temporal = pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio
        self.patch, self.patch_t = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
        self.height, self.width = checks.image_size(
            self.name, (512, 704), int(np.lcm(32, spatial * self.patch)), height, width)
        self._set_frames(frame_count(self.name, num_frames, temporal), frame_layout)
        f, h, w = (self.num_frames - 1) // temporal + 1, self.height // spatial, self.width // spatial
        self.latent_size = (f, h, w)  # the unpacked latent video
        tokens = (f // self.patch_t) * (h // self.patch) * (w // self.patch)
        self.latent_shape = (tokens, pipe.transformer.config.in_channels * self.patch_t * self.patch ** 2)
        self.rope_interpolation_scale = (temporal / frame_rate, spatial, spatial)
        config = pipe.scheduler.config
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = mu_from_config(config, f * h * w, default_max_shift=1.15)  # ignored unless use_dynamic_shifting
        self.schedule = flow_schedule(pipe.scheduler, num_inference_steps, device=self.device, sigmas=sigmas, mu=mu)

    def init_noise(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """x_T drawn as ``LTXPipeline.prepare_latents`` draws it, N(0, I) on (n, C, f, h, w), then packed
        (n, tokens, C'): the same generator gives the pipeline's own x_T."""
        x = standard_normal((n, self.transformer.config.in_channels, *self.latent_size), generator)  # (n, C, f, h, w)
        return self.pipe._pack_latents(x, self.patch, self.patch_t).to(self.device)  # (n, tokens, C')

    # ---- prepare ------------------------------------------------------------------------
    def _encode(self, prompts: list[str], negative: Optional[list[str]]) -> dict[str, Tensor]:
        embeds, mask, negative_embeds, negative_mask = self.pipe.encode_prompt(
            prompt=prompts, negative_prompt=negative, do_classifier_free_guidance=self.do_classifier_free_guidance,
            num_videos_per_prompt=1, max_sequence_length=self.max_sequence_length,
            device=self.device)  # (P, L, D), mask (P, L)
        return self.conditioning({"prompt_embeds": embeds, "prompt_attention_mask": mask},
                                 {"prompt_embeds": negative_embeds, "prompt_attention_mask": negative_mask})

    # ---- denoise ------------------------------------------------------------------------
    def denoise(self, x: Tensor, i: int, cond: Cond) -> Tensor:
        x_in, cfg = self.cfg_batch(x, cond)  # (2B or B, tokens, C'): [uncond, cond]
        f, h, w = self.latent_size
        out = self.transformer(
            hidden_states=x_in, encoder_hidden_states=paired(cond, "prompt_embeds", cfg).to(self.dtype),
            timestep=self.schedule.timesteps[i].expand(x_in.shape[0]),  # (2B,) t = σ·1000
            encoder_attention_mask=paired(cond, "prompt_attention_mask", cfg), num_frames=f, height=h, width=w,
            rope_interpolation_scale=self.rope_interpolation_scale, return_dict=False,
        )[0]  # (2B, tokens, C') velocity
        guided = self.guided(out, cond, cfg)  # (B, tokens, C')
        if cfg and self.guidance_rescale > 0:
            guided = rescale_guidance(guided, out.float().chunk(2)[1], self.guidance_rescale)
        return guided

    # ---- decode -------------------------------------------------------------------------
    def decode_video(self, x0: Tensor) -> Tensor:
        checks.latents(self.name, x0, self.latent_shape)
        video = decoding.raw(self.latent_rule, self.pipe, x0, self.height, self.width, num_frames=self.num_frames,
                             decode_timestep=self.decode_timestep)  # (B, 3, F, H, W) in [-1, 1]
        return decoding.video_to_unit(video)  # (B, F, 3, H, W)
