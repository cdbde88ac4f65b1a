"""LAION aesthetic predictor: a head on the L2-normalized CLIP ViT-L/14 image embedding.

- ``v2`` (default): "improved aesthetic predictor" (C. Schuhmann, 2022,
  github.com/christophschuhmann/improved-aesthetic-predictor), MLP 768→1024→128→64→16→1 trained on
  SAC + LAION-Logos + AVA ratings, weights ``sac+logos+ava1-l14-linearMSE.pth``.
- ``v1``: the linear head of LAION-AI/aesthetic-predictor (``sa_0_4_vit_l_14_linear.pth``,
  ``nn.Linear(768, 1)``).
Both read OpenAI CLIP ViT-L/14's projected image embedding divided by its L2 norm; scores are on
the raters' ~1–10 scale. The text prompt is ignored. The CLIP backbone is transformers'
``openai/clip-vit-large-patch14`` (``$STEER_CLIP_PATH``) unless another model is passed.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from steer.rewards.clip import WEIGHTS as CLIP_WEIGHTS
from steer.rewards.encoders import load_clip_dir
from steer.rewards.encoders import ClipEncoder
from steer.rewards.mlp import RewardMLP
from steer.rewards.torch_reward import TorchReward
from steer.rewards.weights import WeightFile, load_state_dict, resolve_file

WEIGHTS = {
    "v2": WeightFile("sac+logos+ava1-l14-linearMSE.pth", env="STEER_AESTHETIC_PATH",
                     url="https://github.com/christophschuhmann/improved-aesthetic-predictor"),
    "v1": WeightFile("sa_0_4_vit_l_14_linear.pth", env="STEER_AESTHETIC_PATH",
                     url="https://github.com/LAION-AI/aesthetic-predictor"),
}


def make_head(version: str, input_size: int = 768) -> nn.Module:
    """The v2 MLP or the v1 linear head, randomly initialized."""
    if version == "v2":
        return RewardMLP(input_size)
    if version == "v1":
        return nn.Linear(input_size, 1)
    raise ValueError(f"unknown aesthetic predictor version {version!r}; choose 'v2' (MLP) or 'v1' (linear)")


class _AestheticModel(nn.Module):
    def __init__(self, encoder: ClipEncoder, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head


class AestheticReward(TorchReward):
    """head(normalize(CLIP image embedding)) — prompt-independent."""

    name = "aesthetic"

    def __init__(self, encoder: ClipEncoder, head: nn.Module):
        super().__init__(_AestheticModel(encoder, head))
        self.encoder, self.head = encoder, head

    @classmethod
    def from_model(cls, clip_model: nn.Module, head: nn.Module) -> "AestheticReward":
        """From an in-memory CLIP (open_clip or transformers) and a head (``make_head``), weights in them."""
        return cls(ClipEncoder(clip_model), head)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, clip_model: nn.Module, version: str = "v2") -> "AestheticReward":
        """Head weights from a LAION checkpoint file (strict), on ``clip_model``."""
        embed_dim = _embed_dim(clip_model)
        head = make_head(version, embed_dim)
        head.load_state_dict(load_state_dict(path), strict=True)
        return cls.from_model(clip_model, head)

    @classmethod
    def from_pretrained(cls, version: str = "v2", path: Optional[str] = None,
                        clip_path: Optional[str] = None) -> "AestheticReward":
        """Head from ``path`` / ``$STEER_AESTHETIC_PATH``; CLIP ViT-L/14 from ``clip_path`` /
        ``$STEER_CLIP_PATH`` / the Hugging Face cache."""
        make_head(version)  # validate the version before looking for files
        head_file = resolve_file(WEIGHTS[version], path)
        clip_model, _ = load_clip_dir(CLIP_WEIGHTS, clip_path)
        return cls.from_checkpoint(head_file, clip_model, version)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        embedding = F.normalize(self.encoder.encode_image(images), dim=-1)  # (B, D)
        return self.head(embedding.to(self.dtype)).float().squeeze(-1)  # (B,)


def _embed_dim(clip_model: nn.Module) -> int:
    if hasattr(clip_model, "config"):
        return int(clip_model.config.projection_dim)
    return int(clip_model.visual.output_dim)  # open_clip
