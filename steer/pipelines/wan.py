"""Wan 2.1 / 2.2 text-to-video (``WanPipeline``; Wan Team 2025, "Wan: Open and Advanced Large-Scale
Video Generative Models") as a ``Process``: rectified flow on video latents (B, C, F, h, w).

Latents stay in the shape ``WanTransformer3DModel`` consumes, (C, 1 + (F−1)/4, H/8, W/8) for Wan
2.1's VAE; the transformer patchifies them itself. Prompts are encoded once with the pipeline's
``encode_prompt`` (UMT5, padded with zeros to ``max_sequence_length``). Classifier-free guidance
(Ho & Salimans 2022; on when ``guidance_scale > 1``, negative prompt "" by default, as diffusers) is
one batched transformer call on [uncond, cond] where the pipeline makes two calls. The transformer
gets the scheduler's ``t`` (σ·1000); with ``expand_timesteps`` (Wan 2.2 TI2V) one ``t`` per latent
token. Wan 2.2's two experts (``transformer_2`` with ``boundary_ratio``): steps with
t >= boundary_ratio·T use ``transformer`` and ``guidance_scale``, the rest ``transformer_2`` and
``guidance_scale_2`` (default: ``guidance_scale``). The chain is the rectified-flow ODE / Flow-GRPO
SDE on the σ grid read off the pipeline's scheduler: ``FlowMatchEulerDiscreteScheduler`` (its
``shift``; then η=0 reproduces ``pipe(...)``), or a multistep solver with flow sigmas (UniPC /
DPM-Solver with ``use_flow_sigmas=True``, ``prediction_type="flow_prediction"``, as the released
checkpoints ship): steer integrates its σ grid with Euler, not with UniPC's predictor-corrector, so
the result differs from ``pipe(...)`` as DDIM differs from PNDM for Stable Diffusion.
x̂0 = x − σ·v. ``decode_video`` denormalizes with the VAE's ``latents_mean`` / ``latents_std`` and
runs ``AutoencoderKLWan``: frames (B, F, 3, H, W); ``decode`` returns them as one frame grid per
video (see ``steer.pipelines.video``).

Deviation: the guidance combination is computed in float32 (diffusers: in the transformer's dtype).
Not supported: image-to-video / VACE / animate pipelines, ``attention_kwargs``, caching hooks.
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Optional

import torch
from torch import Tensor

from steer.pipelines import checks, decoding
from steer.pipelines.flow_schedule import flow_schedule
from steer.pipelines.guided import paired
from steer.pipelines.video import VideoProcess, frame_count
from steer.types import Cond, Schedule


def multistep_flow_schedule(scheduler, num_inference_steps: int, device=None) -> Schedule:
    """The σ grid of a multistep solver with flow sigmas (UniPC / DPM-Solver): ``set_timesteps`` on a
    copy, ``timesteps`` (S,) as the pipeline passes them and ``sigmas`` (S+1, ending at 0)."""
    name = type(scheduler).__name__
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(num_inference_steps, device=device)
    levels = sched.sigmas.to(device=device, dtype=torch.float32)  # (S+1,)
    if levels.shape != (num_inference_steps + 1,) or float(levels[-1]) != 0.0:
        raise ValueError(f"{name} produced sigmas of shape {tuple(levels.shape)} ending at {float(levels[-1]):g}; "
                         f"steer's chain needs them to end at 0: register_to_config(final_sigmas_type='zero')")
    return Schedule(kind="flow", timesteps=sched.timesteps, sigmas=levels, prediction_type="flow")


class WanProcess(VideoProcess):
    """``WanPipeline`` -> ``Process``. Options use diffusers' names and defaults."""

    name = "WanProcess"
    latent_rule = "wan"  # steer.pipelines.decoding: decode_video and steer.wrap share it

    def __init__(self, pipe, *, num_inference_steps: int = 50, guidance_scale: float = 5.0,
                 guidance_scale_2: Optional[float] = None, height: Optional[int] = None, width: Optional[int] = None,
                 num_frames: int = 81, negative_prompt=None, batch_size: Optional[int] = None,
                 max_sequence_length: int = 512, frame_layout="grid"):
        if pipe.transformer is None:
            raise ValueError(f"{self.name}: the pipeline has no `transformer` (high-noise expert); load it with one")
        self.transformer, self.transformer_2, self.vae = pipe.transformer, pipe.transformer_2, pipe.vae
        checks.bind_common(self, pipe, pipe.transformer, num_inference_steps=num_inference_steps,
                           batch_size=batch_size, guidance_scale=guidance_scale, negative_prompt=negative_prompt)
        boundary = pipe.config.boundary_ratio
        if guidance_scale_2 is not None and boundary is None:
            raise ValueError(f"{self.name}: guidance_scale_2 is for two-expert Wan 2.2 pipelines (boundary_ratio "
                             f"set); leave it None")
        self.guidance_scale_2 = checks.check_guidance(guidance_scale_2)
        self.max_sequence_length = checks.positive_int("max_sequence_length", max_sequence_length, allow_none=False)
        self.expand_timesteps = bool(pipe.config.expand_timesteps)
        spatial, temporal = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
        _, ph, pw = pipe.transformer.config.patch_size
        self.height, self.width = checks.image_size(
            self.name, (480, 832), math.lcm(16, spatial * ph, spatial * pw), height, width)
        self._set_frames(frame_count(self.name, num_frames, temporal), frame_layout)
        self.latent_shape = (pipe.transformer.config.in_channels, (self.num_frames - 1) // temporal + 1,
                             self.height // spatial, self.width // spatial)
        self.schedule = self._schedule(pipe.scheduler, num_inference_steps)
        self.low_noise = [False] * num_inference_steps  # steps on transformer_2
        if boundary is not None:
            self.low_noise = (self.schedule.timesteps < boundary * pipe.scheduler.config.num_train_timesteps).tolist()
            if any(self.low_noise) and self.transformer_2 is None:
                raise ValueError(f"{self.name}: boundary_ratio={boundary} sends low-noise steps to `transformer_2`, "
                                 f"which is None; load the pipeline with it")

    def _schedule(self, scheduler, num_inference_steps: int) -> Schedule:
        config = scheduler.config
        if "shift" in config:  # FlowMatchEulerDiscreteScheduler: set_timesteps(S) as the pipeline calls it
            return flow_schedule(scheduler, num_inference_steps, device=self.device)
        if config.get("use_flow_sigmas", False) and config.get("prediction_type") == "flow_prediction":
            return multistep_flow_schedule(scheduler, num_inference_steps, device=self.device)
        raise ValueError(f"{self.name}: {type(scheduler).__name__} is not a flow-matching scheduler; use "
                         f"FlowMatchEulerDiscreteScheduler(shift=...) or UniPC with use_flow_sigmas=True and "
                         f"prediction_type='flow_prediction'")

    # ---- prepare ------------------------------------------------------------------------
    def _encode(self, prompts: list[str], negative: Optional[list[str]]) -> dict[str, Tensor]:
        embeds, negative_embeds = self.pipe.encode_prompt(
            prompt=prompts, negative_prompt=negative, do_classifier_free_guidance=self.do_classifier_free_guidance,
            num_videos_per_prompt=1, max_sequence_length=self.max_sequence_length, device=self.device)  # (P, L, D)
        negative_embeds = None if negative_embeds is None else negative_embeds.to(self.dtype)
        return self.conditioning({"prompt_embeds": embeds.to(self.dtype)}, {"prompt_embeds": negative_embeds})

    # ---- denoise ------------------------------------------------------------------------
    def denoise(self, x: Tensor, i: int, cond: Cond) -> Tensor:
        model, scale = self.transformer, cond.guidance_scale
        if self.low_noise[i]:
            model, scale = self.transformer_2, self.guidance_scale_2 if self.guidance_scale_2 is not None else scale
        x_in, cfg = self.cfg_batch(x, cond)  # (2B or B, C, F, h, w): [uncond, cond]
        t = self.schedule.timesteps[i]
        if self.expand_timesteps:  # one t per latent token (patch 2x2), as WanPipeline's mask[:, ::2, ::2]
            F, h, w = x.shape[2:]
            timestep = t.float().expand(x_in.shape[0], F * ((h + 1) // 2) * ((w + 1) // 2))  # (2B, tokens)
        else:
            timestep = t.expand(x_in.shape[0])  # (2B,)
        out = model(hidden_states=x_in, timestep=timestep, encoder_hidden_states=paired(cond, "prompt_embeds", cfg),
                    return_dict=False)[0]  # (2B, C, F, h, w) velocity
        return self.guided(out, replace(cond, guidance_scale=scale), cfg)  # (B, C, F, h, w)

    # ---- decode -------------------------------------------------------------------------
    def decode_video(self, x0: Tensor) -> Tensor:
        checks.latents(self.name, x0, self.latent_shape)
        video = decoding.raw(self.latent_rule, self.pipe, x0)  # (B, 3, F, H, W) in [-1, 1]
        return decoding.video_to_unit(video)  # (B, F, 3, H, W)
