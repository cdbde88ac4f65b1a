"""Latents -> images for ``steer.wrap``: the family's own rule (``steer.pipelines.decoding``).

A wrapped pipeline runs its own ``__call__`` with ``output_type="latent"``; steer then turns its
latents (the final ones, and the x̂0 predictions FK scores) into images with the rule the family's
adapter decodes with (``Process.latent_rule``), or, for a pipeline steer has no adapter for, the rule
``steer.pipelines.decoding.PIPELINES`` names for its class. The rules and the table of which
pipelines use which are in ``steer.pipelines.decoding``; nothing is repeated here.

``LatentDecoder.raw`` gives the VAE's output in [-1, 1] (what the pipeline's ``image_processor``
post-processes); ``decode`` gives images in [0, 1] for rewards (the ``Process.decode`` contract,
so ``steer.scoring`` scores through it). A pipeline with no rule is refused with one line;
``steer.wrap(..., decode=fn)`` supplies a rule of one's own (``fn(latents) -> images in [-1, 1]``).

Video pipelines (Wan, LTX-Video: ``decoding.VIDEO_RULES``) get a ``VideoDecoder``: ``raw`` gives the VAE's
videos (B, 3, F, H, W) in [-1, 1] (what the pipeline's ``video_processor`` post-processes),
``decode_video`` the frames (B, F, 3, H, W) in [0, 1], and ``decode`` the one frame grid per video that
``VideoProcess.decode`` gives (``steer.pipelines.video.lay_out``), so an image reward scores what it scores
under ``steer.generate`` and a video reward (``space = "video"``) reads the frames back from the grid
(``video.video_of`` takes the decoder as it takes a ``VideoProcess``).
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

from torch import Tensor

from steer.errors import SteerError
from steer.pipelines import decoding, video
from steer.pipelines.decoding import rule_for, to_unit  # noqa: F401 (re-exported)


class LatentDecoder:
    """The pipeline's latents -> images; ``batch_size`` None (one decoder call per scoring batch)."""

    batch_size = None

    def __init__(self, pipe, rule: str, custom: Optional[Callable[[Tensor], Tensor]] = None,
                 height: Optional[int] = None, width: Optional[int] = None):
        self.pipe, self.rule, self.custom, self.height, self.width = pipe, rule, custom, height, width
        self.vae = getattr(pipe, "vae", None)
        self.name = f"steer.wrap({type(pipe).__name__})"

    def raw(self, x: Tensor) -> Tensor:
        """Latents (B, ...) -> the VAE's images (B, 3, H, W), about [-1, 1]."""
        if self.custom is not None:
            return self.custom(x)
        return decoding.raw(self.rule, self.pipe, x, self.height, self.width)

    def images(self, raw: Tensor) -> Tensor:
        """``raw``'s output -> what an image reward reads (B, 3, H, W) in [0, 1], float32."""
        return to_unit(raw)

    def decode(self, x: Tensor) -> Tensor:
        """Latents -> images (B, 3, H, W) in [0, 1], float32 (what rewards read)."""
        return self.images(self.raw(x))


class VideoDecoder(LatentDecoder):
    """A video pipeline's latents -> videos; images for rewards are ``frame_layout="grid"`` frame grids."""

    frame_layout = "grid"

    def __init__(self, pipe, rule: str, height: Optional[int] = None, width: Optional[int] = None,
                 num_frames: Optional[int] = None, decode_timestep: float = 0.0):
        super().__init__(pipe, rule, height=height, width=width)
        self.num_frames, self.decode_timestep = num_frames, decode_timestep

    def raw(self, x: Tensor) -> Tensor:
        """Latents (B, ...) -> the VAE's videos (B, 3, F, H, W), about [-1, 1]."""
        return decoding.raw(self.rule, self.pipe, x, self.height, self.width, num_frames=self.num_frames,
                            decode_timestep=self.decode_timestep)

    def images(self, raw: Tensor) -> Tensor:
        """Videos (B, 3, F, H, W) in [-1, 1] -> one frame grid per video (B, 3, rows·H, cols·W) in [0, 1]."""
        return video.lay_out(decoding.video_to_unit(raw), self.frame_layout)

    def decode_video(self, x: Tensor) -> Tensor:
        """Latents -> frames (B, F, 3, H, W) in [0, 1], float32."""
        return decoding.video_to_unit(self.raw(x))

    def frames(self, images: Tensor) -> Tensor:
        """Frame grids from ``decode`` -> frames (B, F, 3, H, W)."""
        return video.frames_of_grid(self.name, images, self.num_frames, self.frame_layout)


def decoder_for(pipe, decode: Optional[Callable] = None, num_frames: Optional[int] = None,
                decode_timestep: float = 0.0, **size) -> LatentDecoder:
    """The ``LatentDecoder`` of ``pipe`` (``decode`` overrides the family's rule; a video rule gives a
    ``VideoDecoder``), or a one-line ``SteerError``."""
    name, rule = type(pipe).__name__, rule_for(pipe)
    videos = "num_videos_per_prompt" in inspect.signature(pipe.__call__).parameters
    if videos and rule not in decoding.VIDEO_RULES:
        raise SteerError(f"steer.wrap: no latents->video rule for {name}; steer.wrap steers the videos of Wan and "
                         f"LTX-Video (steer.pipelines.decoding.VIDEO_RULES), and decode= is for image pipelines")
    if decode is not None:
        if not callable(decode):
            raise SteerError(f"steer.wrap: decode must be a callable latents -> images in [-1, 1], got "
                             f"{type(decode).__name__}")
        if videos:
            raise SteerError(f"steer.wrap: decode= is for image pipelines; {name} is decoded by its family's rule "
                             f"({rule!r}): drop decode=")
        return LatentDecoder(pipe, "custom", decode, **size)
    if rule is None:
        raise SteerError(f"steer.wrap: no latents->image rule for {name} (unknown latent layout); "
                         f"pass decode=fn(latents) -> images in [-1, 1], or add the class to "
                         f"steer.pipelines.decoding.PIPELINES")
    if getattr(pipe, "vae", None) is None:
        raise SteerError(f"steer.wrap: {name} has no vae to decode latents with; pass decode=fn")
    if rule in decoding.VIDEO_RULES:
        return VideoDecoder(pipe, rule, num_frames=num_frames, decode_timestep=decode_timestep, **size)
    return LatentDecoder(pipe, rule, **size)
