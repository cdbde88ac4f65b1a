"""Sana (``SanaPipeline``) as a ``Process``: rectified flow in a deep-compression latent space.

Sana (Xie et al. 2024, "SANA: Efficient High-Resolution Image Synthesis with Linear Diffusion
Transformers") denoises DC-AE latents (``AutoencoderDC``, 32x downsampling, 32 channels) with a
linear-attention DiT conditioned on Gemma-2 token embeddings. Prompts are encoded once with the
pipeline's own ``encode_prompt`` (lower-cased, the "complex human instruction" prepended, the BOS
plus the last ``max_sequence_length - 1`` positions kept, and their attention mask — §3.1 of the
paper); the negative prompt (default ``""``) is encoded without the instruction, as diffusers does.
Classifier-free guidance (Ho & Salimans 2022) is one batched call on [uncond, cond] (skipped when
``guidance_scale <= 1``). The transformer gets ``t · timestep_scale`` with t the scheduler's
timestep, predicts the flow velocity v, and the chain is the rectified-flow ODE / Flow-GRPO SDE with
x̂0 = x − σ·v. ``decode`` is ``vae.decode(x0 / scaling_factor)``, resized and cropped back when the
size was binned.

Schedule: read off a copy of the pipeline's own scheduler after ``set_timesteps(num_inference_steps)``
(the pipeline passes no ``mu``): a ``FlowMatchEulerDiscreteScheduler`` (σ, t = σ·1000) or the
``DPMSolverMultistepScheduler`` the released checkpoints ship (``prediction_type="flow_prediction"``,
``use_flow_sigmas=True``: its shifted flow σ grid and its integer timesteps). Deviation: with the
DPM-Solver the chain takes steer's first-order step on that grid instead of DPM-Solver++'s
second-order multistep update. DPM-Solver++(1) in flow parameterization *is* the Euler step, so the
chain reproduces the pipeline exactly at ``solver_order=1`` (and at 2 steps, where diffusers takes only
first-order steps); at the released ``solver_order=2`` it is the same ODE solved at first order.

Resolution binning (``use_resolution_binning``): as in diffusers, the requested size is generated at
the nearest aspect-ratio bin of the model's resolution (tables for transformer ``sample_size`` 16 / 32 /
64 / 128) and ``decode`` resizes and crops back. The default ``None`` bins when a table exists and does
not otherwise (diffusers raises); ``height`` / ``width`` are the generated size.

Not supported: custom ``timesteps`` / ``sigmas``, ``eta``, ``attention_kwargs`` (LoRA scale),
precomputed prompt embeddings; Sana-Sprint (``SanaSprintPipeline``) and the ControlNet / PAG variants.
"""
from __future__ import annotations

import copy
import inspect
import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from steer.pipelines import checks
from steer.pipelines.flow_schedule import flow_schedule
from steer.pipelines.guided import GuidedProcess, paired
from steer.types import Cond, Schedule

PIPELINE_DEFAULT = "default"  # complex_human_instruction: the pipeline's own (its ``__call__`` default)


def aspect_ratio_bins(pipe) -> Optional[dict]:
    """SanaPipeline's aspect-ratio bin table for its transformer's ``sample_size`` (None if none)."""
    from diffusers.pipelines.sana import pipeline_sana as sana

    tables = {128: sana.ASPECT_RATIO_4096_BIN, 64: sana.ASPECT_RATIO_2048_BIN,
              32: sana.ASPECT_RATIO_1024_BIN, 16: sana.ASPECT_RATIO_512_BIN}
    return tables.get(pipe.transformer.config.sample_size)


def sana_schedule(scheduler, num_inference_steps: int, device=None) -> Schedule:
    """The flow chain of SanaPipeline's scheduler (FlowMatchEuler, or DPM-Solver with flow sigmas)."""
    config, name = scheduler.config, type(scheduler).__name__
    if "shift" in config:  # FlowMatchEulerDiscreteScheduler
        if config.get("use_dynamic_shifting", False):
            raise ValueError(f"SanaPipeline passes no mu to {name}: register_to_config(use_dynamic_shifting=False)")
        return flow_schedule(scheduler, num_inference_steps, device=device)
    if not (config.get("use_flow_sigmas", False) and config.get("prediction_type") == "flow_prediction"):
        raise ValueError(f"{name} is not a flow-matching scheduler; Sana needs FlowMatchEulerDiscreteScheduler or "
                         f"DPMSolverMultistepScheduler(prediction_type='flow_prediction', use_flow_sigmas=True)")
    if config.get("final_sigmas_type", "zero") != "zero":
        raise ValueError(f"{name} ends at sigma_min, not 0: register_to_config(final_sigmas_type='zero')")
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(num_inference_steps, device=device)
    timesteps = sched.timesteps.to(device=device, dtype=torch.float32)  # (S,) integer t = ⌊σ·1000⌋
    sigmas = sched.sigmas.to(device=device, dtype=torch.float32)  # (S+1,) shifted flow σ, last 0
    return Schedule(kind="flow", timesteps=timesteps, sigmas=sigmas, prediction_type="flow")


class SanaProcess(GuidedProcess):
    """``SanaPipeline`` -> ``Process``. Options use diffusers' names and defaults
    (``complex_human_instruction="default"`` takes the pipeline's own; None turns it off)."""

    name = "SanaProcess"
    latent_rule = "scaled_shift"  # steer.pipelines.decoding: decode and steer.wrap share it

    def __init__(self, pipe, *, num_inference_steps: int = 20, guidance_scale: float = 4.5,
                 height: Optional[int] = None, width: Optional[int] = None, negative_prompt="",
                 batch_size: Optional[int] = None, max_sequence_length: int = 300, clean_caption: bool = False,
                 complex_human_instruction: Optional[Sequence[str]] | str = PIPELINE_DEFAULT,
                 use_resolution_binning: Optional[bool] = None):
        self.transformer, self.vae = pipe.transformer, pipe.vae
        checks.bind_common(self, pipe, pipe.transformer, num_inference_steps=num_inference_steps,
                           batch_size=batch_size, guidance_scale=guidance_scale, negative_prompt=negative_prompt)
        self.max_sequence_length = checks.positive_int("max_sequence_length", max_sequence_length, allow_none=False)
        self.clean_caption = bool(clean_caption)
        self.complex_human_instruction = self._instruction(complex_human_instruction)
        config = pipe.transformer.config
        factor = pipe.vae_scale_factor
        height, width, orig = checks.resolution_bins(self.name, pipe, aspect_ratio_bins(pipe), height, width,
                                                     use_resolution_binning, 1024)  # SanaPipeline's default
        self.height, self.width = checks.image_size(  # SanaPipeline.check_inputs: multiples of 32
            self.name, 1024, math.lcm(32, factor * config.patch_size), height, width)
        self.orig_height, self.orig_width = orig or (self.height, self.width)  # what decode returns
        self.latent_shape = (config.in_channels, self.height // factor, self.width // factor)
        self.learned_sigma = config.out_channels is not None and config.out_channels // 2 == config.in_channels
        self.timestep_scale = config.get("timestep_scale", 1.0)
        self.schedule = sana_schedule(pipe.scheduler, num_inference_steps, device=self.device)

    def _instruction(self, value) -> Optional[list[str]]:
        if isinstance(value, str) and value == PIPELINE_DEFAULT:
            value = inspect.signature(self.pipe.__call__).parameters["complex_human_instruction"].default
        if value is None or (not isinstance(value, str) and not value):
            return None
        value = [value] if isinstance(value, str) else list(value)
        if not all(isinstance(v, str) for v in value):
            raise ValueError(f"{self.name}: complex_human_instruction must be a list of strings, "
                             f"'default' or None, got {value!r}")
        return value

    # ---- prepare ------------------------------------------------------------------------
    def _encode(self, prompts: list[str], negative: Optional[list[str]]) -> dict[str, Tensor]:
        embeds, mask, negative_embeds, negative_mask = self.pipe.encode_prompt(
            prompts, self.do_classifier_free_guidance, negative_prompt=negative, num_images_per_prompt=1,
            device=self.device, clean_caption=self.clean_caption, max_sequence_length=self.max_sequence_length,
            complex_human_instruction=self.complex_human_instruction)  # (P, L, D), (P, L)
        return self.conditioning({"prompt_embeds": embeds, "prompt_attention_mask": mask},
                                 {"prompt_embeds": negative_embeds, "prompt_attention_mask": negative_mask})

    # ---- denoise ------------------------------------------------------------------------
    def denoise(self, x: Tensor, i: int, cond: Cond) -> Tensor:
        x_in, cfg = self.cfg_batch(x, cond)  # (2B or B, C, h, w): [uncond, cond]
        timestep = self.schedule.timesteps[i].expand(x_in.shape[0]) * self.timestep_scale  # (2B,)
        out = self.transformer(
            x_in, encoder_hidden_states=paired(cond, "prompt_embeds", cfg).to(self.dtype),
            encoder_attention_mask=paired(cond, "prompt_attention_mask", cfg),
            timestep=timestep, return_dict=False,
        )[0]  # (2B, C, h, w) velocity (2C with learned sigma)
        out = self.guided(out, cond, cfg)  # (B, C, h, w)
        return out.chunk(2, dim=1)[0] if self.learned_sigma else out

    # ---- decode -------------------------------------------------------------------------
    def decode(self, x0: Tensor) -> Tensor:
        binned = (self.orig_height, self.orig_width) != (self.height, self.width)
        crop_to = (self.pipe.image_processor, self.orig_width, self.orig_height) if binned else None
        return checks.vae_decode(self.name, self.vae, x0, self.latent_shape, crop_to)  # (B, 3, H, W) in [0, 1]
