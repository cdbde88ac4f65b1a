"""Rewards of the shapes world (to be registered as ``shapes-clip`` and ``shapes-check``).

- ``ShapesClipReward`` (differentiable): the shapes CLIP's ``logit_scale * cos(image, caption)``,
  where ``logit_scale`` is the model's learned temperature (``exp(logit_scale)``, capped at 100 as
  in CLIP training), so reward differences are the log-odds the contrastive model assigns. The
  preprocessing (anti-aliased bilinear resize to the CLIP's input size, normalisation) is torch,
  so gradients reach the pixels.
- ``ShapesCheckReward`` (not differentiable): 1.0 when the exact checker accepts the image for
  its caption, else 0.0. For evaluation and experiments, never as a training signal by default.
- ``ShapesSwapReward`` (``shapes-swap``): the probability the shapes CLIP puts on the true caption
  against all of its corruptions (``world.mismatches``: swapped relation, order, colours, shapes) —
  a held-out reward for ``eval_reward``: an image that merely inflates the cosine does not raise it.
- ``shapes_ot`` (``shapes-ot``): ``steer.rewards.ot.OTClipReward`` (PISCES-style partial OT between the
  caption's tokens and the image's patches, plus the batch OT term) on the shapes CLIP; needs POT.
- ``shapes_temporal`` (``shapes-temporal``): ``steer.rewards.video.TemporalConsistencyReward`` on the
  shapes CLIP — videos' mean cosine of consecutive frames' image embeddings, offline.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch import Tensor

from steer.rewards.base import Reward
from steer.zoo.shapes import checker, world
from steer.zoo.shapes.clip import clip, image_embeds, text_embeds


class ShapesClipReward(Reward):
    """``logit_scale * cosine`` between the shapes CLIP's image and caption embeddings."""

    name = "shapes-clip"
    differentiable = True

    def __init__(self, path: Optional[str | os.PathLike] = None, device: str | torch.device = "cpu"):
        self.model, self.tokenizer = clip(path, device)
        self.device = torch.device(device)
        self.logit_scale = float(self.model.logit_scale.exp().clamp(max=100))
        self._texts: dict[str, Tensor] = {}

    def _text(self, prompts: Sequence[str]) -> Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._texts]
        if missing:
            with torch.no_grad():
                for p, e in zip(missing, text_embeds(self.model, self.tokenizer, missing)):
                    self._texts[p] = e
        return torch.stack([self._texts[p] for p in prompts])  # (B, D)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        img = image_embeds(self.model, images.to(self.device, torch.float32))  # (B, D)
        return self.logit_scale * (img * self._text(prompts)).sum(-1)  # (B,)


class ShapesCheckReward(Reward):
    """1.0 if the exact checker accepts the image for its caption, else 0.0."""

    name = "shapes-check"
    differentiable = False

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return checker.check(images.detach().float().cpu(), prompts).float()  # (B,)


class ShapesSwapReward(Reward):
    """P(true caption | image) among the caption and its corruptions, under the shapes CLIP (in [0, 1])."""

    name = "shapes-swap"
    differentiable = True

    def __init__(self, path: Optional[str | os.PathLike] = None, device: str | torch.device = "cpu",
                 clip_reward: Optional[ShapesClipReward] = None):
        self.clip = clip_reward if clip_reward is not None else ShapesClipReward(path, device)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        c = self.clip
        img = image_embeds(c.model, images.to(c.device, torch.float32))  # (B, D)
        out = []
        for e, caption in zip(img, prompts):
            alternatives = [caption] + sorted({a for v in world.mismatches(caption).values() for a in v})
            logits = c.logit_scale * (c._text(alternatives) @ e)  # (1 + A,)
            out.append(torch.softmax(logits, 0)[0])
        return torch.stack(out)  # (B,)


def shapes_temporal(path: Optional[str | os.PathLike] = None, device: str | torch.device = "cpu",
                    batch_size: Optional[int] = None):
    """``temporal_consistency`` on the shapes CLIP (``shapes-temporal``): the mean cosine of consecutive
    frames' image embeddings, offline."""
    from steer.rewards.video import TemporalConsistencyReward
    from steer.zoo.quiet import quiet_loading
    from steer.zoo.shapes.clip import WEIGHTS_DIR

    with quiet_loading():
        reward = TemporalConsistencyReward.from_pretrained(WEIGHTS_DIR if path is None else path,
                                                           batch_size=batch_size)
    return reward.to(device=device)


def shapes_ot(path: Optional[str | os.PathLike] = None, device: str | torch.device = "cpu", **options):
    """``OTClipReward`` on the shapes CLIP (``shapes-ot``), with the shapes CLIP's preprocessing; ``options``:
    ``mass``, ``reg``, ``iterations``, ``distribution_weight``."""
    from steer.rewards.encoders import ClipEncoder
    from steer.rewards.ot import OTClipReward
    from steer.zoo.shapes.clip import IMAGE_MEAN, IMAGE_STD, preprocess

    model, tokenizer = clip(path, device)
    encoder = ClipEncoder(model, tokenizer, IMAGE_MEAN, IMAGE_STD, preprocess=lambda images, size, mean, std:
                          preprocess(images, size))
    reward = OTClipReward(encoder, **options)
    reward.name = "shapes-ot"
    return reward
