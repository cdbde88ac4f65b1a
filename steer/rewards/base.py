"""The ``Reward`` protocol: images [B,3,H,W] in [0,1] (or, for ``space = "latent"``, latents [B,...];
for ``space = "video"``, frames [B,F,3,H,W] in [0,1]) and B prompts -> scores [B] (float32)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import Tensor


SPACES = ("image", "latent", "video")


class Reward(ABC):
    """A reward model. ``differentiable`` says whether gradients reach the pixels. ``space``: what it
    reads — ``"image"`` (decoded images (B, 3, H, W) in [0, 1], the default), ``"latent"`` (the
    denoiser's x̂0 / final latents (B, ...) as they are, so methods skip the VAE decode when scoring) or
    ``"video"`` (decoded videos' frames (B, F, 3, H, W) in [0, 1], from a video pipeline's
    ``decode_video``; one video is one reward call)."""

    name: str = "reward"
    differentiable: bool = False
    space: str = "image"

    @abstractmethod
    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """The raw scores (B,)."""

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        if self.space == "latent":
            if not isinstance(images, Tensor) or images.ndim < 1:
                raise ValueError(f"latent reward {self.name!r}: expects latents (B, ...), got {type(images).__name__}")
        elif self.space == "video":
            if not isinstance(images, Tensor) or images.ndim != 5 or images.shape[2] != 3:
                shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
                raise ValueError(f"video reward {self.name!r}: frames must be (B, F, 3, H, W) in [0, 1], got {shape}")
        elif images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"reward {self.name!r}: images must be (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"reward {self.name!r}: {images.shape[0]} images but {len(prompts)} prompts")
        out = self.score(images, list(prompts))
        if out is None:
            raise TypeError(f"reward {self.name!r} returned None; return one score per image")
        if isinstance(out, (str, bytes, dict)):
            what = f"a dict with keys {sorted(map(str, out))[:5]}" if isinstance(out, dict) else \
                f"{type(out).__name__} {str(out)[:40]!r}"
            raise TypeError(f"reward {self.name!r} returned {what}, not scores; return a tensor of scores, one per image")
        out = torch.as_tensor(out)
        if out.is_complex() or out.dtype == torch.bool:
            raise TypeError(f"reward {self.name!r} returned {out.dtype} scores; return real numbers, one per image")
        if out.device.type == "meta":
            raise TypeError(f"reward {self.name!r} returned scores on the meta device (no values); return them "
                            f"on the images' device")
        out = out.float().reshape(-1)
        if out.shape[0] != images.shape[0]:
            raise ValueError(f"reward {self.name!r} returned {out.shape[0]} scores for {images.shape[0]} images")
        if not torch.isfinite(out).all():
            bad = [prompts[k] for k in torch.nonzero(~torch.isfinite(out)).flatten().tolist()]
            raise FloatingPointError(f"reward {self.name!r} returned NaN/inf for prompt(s) {bad[:3]}")
        return out
