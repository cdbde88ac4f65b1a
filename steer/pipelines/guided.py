"""``GuidedProcess``: the part every text-conditioned family with classifier-free guidance shares.

Prompts (and the negative prompt) are encoded once in ``prepare`` through the family's
``_encode``; ``denoise`` implementations lay the latents out as one [uncond, cond] batch with
``cfg_batch`` and combine the two halves with ``guided``.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Optional, Sequence

import torch
from torch import Tensor

from steer.pipelines import checks
from steer.pipelines.base import Process, guide
from steer.types import Cond


class GuidedProcess(Process):
    """A ``Process`` with prompts, a negative prompt and classifier-free guidance (scale > 1)."""

    guidance_scale: float = 1.0
    negative_prompt = None

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.guidance_scale > 1

    @abstractmethod
    def _encode(self, prompts: list[str], negative: Optional[list[str]]) -> dict[str, Tensor]:
        """The family's conditioning tensors (one row per prompt; ``negative_*`` keys when guiding)."""

    def prepare(self, prompts: Sequence[str] | str) -> Cond:
        prompts = checks.prompt_list(self.name, prompts)
        negative = checks.negative_prompts(self.name, self.negative_prompt, len(prompts))
        with torch.no_grad():
            tensors = self._encode(prompts, negative)
        return Cond(prompts=tuple(prompts), tensors=tensors, guidance_scale=self.guidance_scale)

    def conditioning(self, positive: dict[str, Tensor], negative: dict[str, Tensor]) -> dict[str, Tensor]:
        """``_encode``'s result: the ``positive`` tensors, plus the ``negative`` ones under ``negative_``
        keys when guiding (the unconditional branch ``cfg_batch`` / ``paired`` put first)."""
        if not self.do_classifier_free_guidance:
            return dict(positive)
        return {**positive, **{"negative_" + k: v for k, v in negative.items()}}

    def cfg_batch(self, x: Tensor, cond: Cond) -> tuple[Tensor, bool]:
        """Latents in the denoiser's dtype, doubled as [uncond, cond] when ``cond`` guides."""
        cfg = "negative_prompt_embeds" in cond.tensors
        x_in = x.to(self.dtype)  # (B, ...)
        return (torch.cat([x_in, x_in]) if cfg else x_in), cfg  # (2B, ...) or (B, ...)

    @staticmethod
    def guided(out: Tensor, cond: Cond, cfg: bool) -> Tensor:
        """Combine an [uncond, cond] output batch with the guidance scale (float32)."""
        out = out.float()
        if not cfg:
            return out
        uncond, text = out.chunk(2)
        if cond.detach_uncond:  # gradients through the conditional branch only (Flow-GRPO's training step)
            uncond = uncond.detach()
        return guide(uncond, text, cond.guidance_scale)  # (B, ...)


def paired(cond: Cond, key: str, cfg: bool) -> Tensor:
    """``cond.tensors[key]``, preceded by its ``negative_`` rows when guiding: (2B, ...) or (B, ...)."""
    value = cond.tensors[key]
    return torch.cat([cond.tensors["negative_" + key], value]) if cfg else value
