"""``TorchReward``: a ``Reward`` backed by torch modules (device/dtype handling, eval mode, frozen)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from steer.rewards.base import Reward


class TorchReward(Reward):
    """A reward whose networks live in ``self.model`` (an ``nn.Module``), frozen and in eval mode.

    Gradients flow to the input pixels (``differentiable``); the parameters never need them.
    Scores are returned in float32 whatever the model dtype.
    """

    differentiable = True

    def __init__(self, model: nn.Module):
        self.model = model.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None) -> "TorchReward":
        """Move the networks (in place) and return ``self``."""
        self.model.to(device=device, dtype=dtype)
        return self

    def _pixels(self, images: Tensor) -> Tensor:
        """Images on the model's device and dtype (differentiably)."""
        return images.to(device=self.device, dtype=self.dtype)  # (B, 3, H, W)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device}, dtype={self.dtype})"
