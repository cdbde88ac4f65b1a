"""Rewards on videos (``space = "video"``: frames (B, F, 3, H, W) in [0, 1]).

- ``FrameReward(reward, reduce="mean", stride=1)``: any image reward scored on every ``stride``-th
  frame (frames 0, k, 2k, ...), reduced over frames by ``mean`` or ``min`` (the worst frame). In a
  spec string: ``NAME@frames[:REDUCE][:STRIDE]`` — ``hps@frames`` (mean of every frame),
  ``hps@frames:min``, ``hps@frames:min:4``, ``clip@frames:4=0.5`` (``parse_frames``).
- ``TemporalConsistencyReward`` (``temporal_consistency``): the mean cosine similarity of consecutive
  frames' CLIP image embeddings, (1/(F−1)) Σ_f cos(e_f, e_{f+1}) in [−1, 1] (1 for a still video; a
  single frame scores 1). Prompt-independent; differentiable. The CLIP is a transformers ``CLIPModel``
  directory (``path=``, ``$STEER_CLIP_PATH`` or the Hugging Face cache of
  ``openai/clip-vit-large-patch14``, like the ``clip`` reward), preprocessed as its
  ``CLIPImageProcessor`` (mean / std read from the directory's ``preprocessor_config.json``).
  ``shapes-temporal`` is the same reward on the shapes world's shipped CLIP (offline, for tests).

One video is one reward call (``scoring`` counts B), however many frames a reward reads.
"""
from __future__ import annotations

import json
import os
import re
from typing import Optional, Sequence

import torch
from torch import Tensor

from steer.rewards.base import Reward
from steer.rewards.encoders import ClipEncoder, cosine
from steer.rewards.preprocess import CLIP_MEAN, CLIP_STD, processor_preprocess

REDUCTIONS = ("mean", "min")
FRAMES = "frames"
SPEC_FORM = "NAME@frames[:mean|min][:STRIDE], e.g. hps@frames:min:4"
_STRIDE = re.compile(r"[0-9]+")


class FrameReward(Reward):
    """An image reward applied per frame (every ``stride``-th, from the first), reduced by ``mean`` or
    ``min`` over the scored frames. ``batch_size``: frames per call of the image reward (default: all
    B·F' at once)."""

    space = "video"

    def __init__(self, reward, reduce: str = "mean", stride: int = 1, batch_size: Optional[int] = None):
        from steer.rewards.combine import as_reward

        reward = as_reward(reward)
        if reward.space != "image":
            raise ValueError(f"per-frame reward: {reward.name!r} reads {reward.space}s, not images; only an image "
                             f"reward can be scored per frame")
        if reduce not in REDUCTIONS:
            raise ValueError(f"per-frame reward {reward.name!r}: reduce must be 'mean' or 'min', got {reduce!r}")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"per-frame reward {reward.name!r}: stride must be an int >= 1, got {stride!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"per-frame reward {reward.name!r}: batch_size must be an int >= 1, got {batch_size!r}")
        self.reward, self.reduce, self.stride, self.batch_size = reward, reduce, stride, batch_size
        self.name = f"{reward.name}@{FRAMES}:{reduce}:{stride}"
        self.differentiable = reward.differentiable

    def score(self, videos: Tensor, prompts: Sequence[str]) -> Tensor:
        frames = videos[:, ::self.stride]  # (B, F', 3, H, W)
        B, F = frames.shape[:2]
        flat = frames.reshape(B * F, *frames.shape[2:])  # (B·F', 3, H, W), video-major
        names = [p for p in prompts for _ in range(F)]
        chunk = self.batch_size or flat.shape[0]
        scores = torch.cat([self.reward(flat[s:s + chunk], names[s:s + chunk]).to(videos.device)
                            for s in range(0, flat.shape[0], chunk)]).view(B, F)  # (B, F')
        return scores.mean(dim=1) if self.reduce == "mean" else scores.amin(dim=1)  # (B,)

    def to(self, device=None, dtype=None) -> "FrameReward":
        if hasattr(self.reward, "to"):
            self.reward.to(device=device, dtype=dtype)
        return self

    def __repr__(self) -> str:
        return f"FrameReward({self.reward!r}, reduce={self.reduce!r}, stride={self.stride})"


def parse_frames(term: str) -> tuple[str, Optional[tuple[str, int]]]:
    """A spec term -> (the reward's name, (reduce, stride)) for ``NAME@frames[:REDUCE][:STRIDE]``, or
    (term, None) without ``@``. A bad suffix is a one-line ``ValueError`` showing the form."""
    if "@" not in term:
        return term, None
    base, _, suffix = term.rpartition("@")
    base, parts = base.strip(), [s.strip() for s in suffix.split(":")]
    if not base:
        raise ValueError(f"reward spec term {term!r} names no reward before '@'; write {SPEC_FORM}")
    if parts[0].lower() != FRAMES:
        raise ValueError(f"reward spec term {term!r}: after '@' write frames (per-frame scoring), got "
                         f"{suffix.strip()!r}; write {SPEC_FORM}")
    reduce, stride = "mean", 1
    seen_reduce = seen_stride = False
    for part in parts[1:]:
        if part.lower() in REDUCTIONS and not seen_reduce:
            reduce, seen_reduce = part.lower(), True
        elif _STRIDE.fullmatch(part) and int(part) >= 1 and not seen_stride:
            stride, seen_stride = int(part), True
        else:
            raise ValueError(f"reward spec term {term!r}: {part!r} is neither a reduction (mean, min) nor a "
                             f"stride (an int >= 1), or is given twice; write {SPEC_FORM}")
    return base, (reduce, stride)


def frames_key(base: str, frames: Optional[tuple[str, int]]) -> str:
    """The canonical spec name of a (per-frame) term: ``hps`` or ``hps@frames:min:4``."""
    return base if frames is None else f"{base}@{FRAMES}:{frames[0]}:{frames[1]}"


class TemporalConsistencyReward(Reward):
    """Mean cosine similarity of consecutive frames' CLIP image embeddings (B,), in [−1, 1]."""

    name = "temporal_consistency"
    space = "video"
    differentiable = True

    def __init__(self, encoder: ClipEncoder, batch_size: Optional[int] = None):
        self.encoder = encoder
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, path: Optional[str | os.PathLike] = None, batch_size: Optional[int] = None):
        """A transformers CLIP directory: ``path``, else ``$STEER_CLIP_PATH``, else the cached
        ``openai/clip-vit-large-patch14``; a one-line error says where to get it when absent."""
        from steer.rewards.clip import WEIGHTS
        from steer.rewards.encoders import load_clip_dir
        from steer.rewards.weights import resolve_dir

        directory = resolve_dir(WEIGHTS, None if path is None else str(path))
        model, tokenizer = load_clip_dir(WEIGHTS, directory)
        mean, std = _normalization(directory)
        return cls(ClipEncoder(model, tokenizer, mean=mean, std=std, preprocess=processor_preprocess), batch_size)

    def embed(self, frames: Tensor) -> Tensor:
        """Frames (N, 3, H, W) in [0, 1] -> CLIP image features (N, D), in chunks of ``batch_size``."""
        chunk = self.batch_size or frames.shape[0]
        return torch.cat([self.encoder.encode_image(frames[s:s + chunk]) for s in range(0, frames.shape[0], chunk)])

    def score(self, videos: Tensor, prompts: Sequence[str]) -> Tensor:
        B, F = videos.shape[:2]
        if F < 2:
            return videos.new_ones(B, dtype=torch.float32)  # one frame: nothing changes
        e = self.embed(videos.reshape(B * F, *videos.shape[2:])).view(B, F, -1)  # (B, F, D)
        return cosine(e[:, :-1], e[:, 1:]).mean(dim=1)  # (B,): mean over the F−1 consecutive pairs

    def to(self, device=None, dtype=None) -> "TemporalConsistencyReward":
        self.encoder.to(device=device, dtype=dtype)
        return self

    def __repr__(self) -> str:
        return f"TemporalConsistencyReward(image_size={self.encoder.image_size})"


def _normalization(directory: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the directory's ``preprocessor_config.json`` (the shapes CLIP's 0.5s), else OpenAI CLIP's."""
    config = os.path.join(directory, "preprocessor_config.json")
    try:
        with open(config, encoding="utf-8") as f:
            data = json.load(f)
        return tuple(data["image_mean"]), tuple(data["image_std"])
    except (OSError, ValueError, KeyError, TypeError):
        return CLIP_MEAN, CLIP_STD
