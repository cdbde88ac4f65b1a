"""Z-Image (``ZImagePipeline``) as a ``Process``: rectified flow with a single-stream DiT.

Z-Image (Tongyi-MAI 2025, "Z-Image: An Efficient Image Generation Foundation Model with
Single-Stream Diffusion Transformer"; Z-Image-Turbo is its few-step distillation) denoises FLUX-VAE
latents (16 channels, 8x) with a transformer that reads the latents as a list of (C, 1, h, w) frames
(patchified 2x2 inside) and the prompts as a list of variable-length Qwen3 embeddings. Prompts are
encoded once with the pipeline's own ``encode_prompt`` (the chat template of a user turn, the
second-to-last hidden state, padding dropped); here they are kept padded (P, L, D) with their mask
so rows can be indexed, and unpadded per call into exactly the lists the pipeline passes.

Guidance is Z-Image's own form, v = v_c + s·(v_c − v_u) (= standard CFG at scale 1 + s), on whenever
``guidance_scale > 0`` (Turbo runs at 0: one call per latent), as one batched call on [cond, uncond] in
the pipeline's order; ``cfg_truncation`` drops guidance (and the unconditional call) at steps whose
normalized time (1000 − t)/1000 exceeds it, and ``cfg_normalization`` caps ‖v‖ at that factor of ‖v_c‖
per sample, both as the pipeline does. The transformer is given (1000 − t)/1000 = 1 − σ and predicts
−v; ``denoise`` returns v. The σ schedule is the pipeline's: ``linspace(1, 1/S, S)`` through the
scheduler's shift (``mu`` from the image sequence length when it uses dynamic shifting), read off a
copy of the pipeline's own scheduler; x̂0 = x − σ·v. ``decode`` is
``vae.decode(x0 / scaling_factor + shift_factor)``.

Not supported: custom ``sigmas``, ``joint_attention_kwargs`` (LoRA scale), precomputed prompt
embeddings; the img2img / inpaint / ControlNet / Omni pipelines.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from steer.pipelines import checks
from steer.pipelines.flow_schedule import flow_schedule, mu_from_config
from steer.pipelines.guided import GuidedProcess
from steer.types import Cond


class ZImageProcess(GuidedProcess):
    """``ZImagePipeline`` -> ``Process``. Options use diffusers' names and defaults."""

    name = "ZImageProcess"
    latent_rule = "scaled_shift"  # steer.pipelines.decoding: decode and steer.wrap share it

    def __init__(self, pipe, *, num_inference_steps: int = 50, guidance_scale: float = 5.0,
                 height: Optional[int] = None, width: Optional[int] = None, negative_prompt=None,
                 batch_size: Optional[int] = None, max_sequence_length: int = 512,
                 cfg_normalization: float | bool = False, cfg_truncation: Optional[float] = 1.0):
        self.transformer, self.vae = pipe.transformer, pipe.vae
        checks.bind_common(self, pipe, pipe.transformer, num_inference_steps=num_inference_steps,
                           batch_size=batch_size, guidance_scale=guidance_scale, negative_prompt=negative_prompt)
        self.max_sequence_length = checks.positive_int("max_sequence_length", max_sequence_length, allow_none=False)
        self.cfg_normalization = self._nonnegative("cfg_normalization", cfg_normalization)
        self.cfg_truncation = None if cfg_truncation is None else self._nonnegative("cfg_truncation", cfg_truncation)
        factor = pipe.vae_scale_factor
        self.height, self.width = checks.image_size(self.name, 1024, 2 * factor, height, width)  # pipeline default 1024
        h, w = self.height // factor, self.width // factor
        self.latent_shape = (pipe.transformer.in_channels, h, w)
        sigmas = torch.linspace(1.0, 1 / num_inference_steps, num_inference_steps).tolist()  # the pipeline's default
        mu = mu_from_config(pipe.scheduler.config, (h // 2) * (w // 2), default_max_shift=1.15)
        self.schedule = flow_schedule(pipe.scheduler, num_inference_steps, device=self.device, sigmas=sigmas, mu=mu)
        self.guided_steps = self._guided_steps()

    def _nonnegative(self, label: str, value) -> float:
        v = float(value) if isinstance(value, (bool, int, float)) else float("nan")
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{self.name}: {label} must be a number >= 0, got {value!r}")
        return v

    def _guided_steps(self) -> list[bool]:
        """Per step: whether guidance applies (as ZImagePipeline: off where (1000 − t)/1000 > cfg_truncation)."""
        if self.cfg_truncation is None or self.cfg_truncation > 1:
            return [True] * self.num_steps
        t_norms = ((1000 - self.schedule.timesteps.float()) / 1000).tolist()
        return [t <= self.cfg_truncation for t in t_norms]

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.guidance_scale > 0  # ZImagePipeline guides at any positive scale

    # ---- prepare ------------------------------------------------------------------------
    def _encode(self, prompts: list[str], negative: Optional[list[str]]) -> dict[str, Tensor]:
        embeds, negative_embeds = self.pipe.encode_prompt(  # lists of (L_p, D); copies: it templates in place
            prompt=list(prompts), device=self.device, do_classifier_free_guidance=self.do_classifier_free_guidance,
            negative_prompt=None if negative is None else list(negative),
            max_sequence_length=self.max_sequence_length)
        return self.conditioning(self._padded(embeds), self._padded(negative_embeds or []))

    @staticmethod
    def _padded(embeds: list[Tensor]) -> dict[str, Tensor]:
        if not embeds:
            return {}
        lengths = torch.tensor([len(e) for e in embeds], device=embeds[0].device)
        mask = torch.arange(int(lengths.max()), device=lengths.device) < lengths[:, None]  # (P, L) bool
        return {"prompt_embeds": pad_sequence(embeds, batch_first=True), "prompt_mask": mask}  # (P, L, D)

    @staticmethod
    def _unpadded(cond: Cond, prefix: str = "") -> list[Tensor]:
        embeds, mask = cond.tensors[prefix + "prompt_embeds"], cond.tensors[prefix + "prompt_mask"]
        return [e[m] for e, m in zip(embeds, mask)]  # B x (L_b, D), as encode_prompt returned them

    # ---- denoise ------------------------------------------------------------------------
    def denoise(self, x: Tensor, i: int, cond: Cond) -> Tensor:
        n = x.shape[0]
        cfg = "negative_prompt_embeds" in cond.tensors and self.guided_steps[i]
        timestep = (1000 - self.schedule.timesteps[i].expand(n)) / 1000  # (B,) 1 − σ
        x_in, feats = x.to(self.dtype), self._unpadded(cond)  # (B, C, h, w)
        if cfg:  # [cond, uncond], the pipeline's order
            x_in, timestep = x_in.repeat(2, 1, 1, 1), timestep.repeat(2)  # (2B, C, h, w), (2B,)
            feats = feats + self._unpadded(cond, "negative_")
        out = self.transformer(list(x_in.unsqueeze(2).unbind(0)), timestep, feats, return_dict=False)[0]
        out = torch.stack([o.float() for o in out])  # (2B or B, C, 1, h, w)
        if cfg:
            out = self._guide(out[:n], out[n:], cond)
        return -out.squeeze(2)  # (B, C, h, w) velocity v (the model predicts −v)

    def _guide(self, pos: Tensor, neg: Tensor, cond: Cond) -> Tensor:
        if cond.detach_uncond:  # gradients through the conditional branch only (Flow-GRPO's training step)
            neg = neg.detach()
        pred = pos + cond.guidance_scale * (pos - neg)  # (B, C, 1, h, w)
        if self.cfg_normalization > 0:  # cap ‖pred‖ at cfg_normalization · ‖pos‖, per sample
            limit = torch.linalg.vector_norm(pos.flatten(1), dim=1) * self.cfg_normalization  # (B,)
            norm = torch.linalg.vector_norm(pred.flatten(1), dim=1)  # (B,)
            scale = torch.where(norm > limit, limit / norm, torch.ones_like(norm))
            pred = pred * scale.view(-1, *[1] * (pred.dim() - 1))
        return pred

    # ---- decode -------------------------------------------------------------------------
    def decode(self, x0: Tensor) -> Tensor:
        return checks.vae_decode(self.name, self.vae, x0, self.latent_shape)  # (B, 3, H, W) in [0, 1]
