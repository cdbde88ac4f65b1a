"""``VideoProcess``: what the text-to-video adapters (Wan, LTX-Video) share — the frame count and
how a decoded video meets steer's image protocol.

A family implements ``decode_video(x0) -> frames (B, F, 3, H, W) in [0, 1]`` (differentiable, what
the pipeline's ``output_type="pt"`` returns). Rewards, ``Result.images`` and the image writers take
(B, 3, H, W), so ``decode`` lays the frames out as one image per video (``frame_layout``):
``"grid"`` (default) tiles all F frames row-major into ceil(√F) columns (empty cells black), so an
image reward scores every frame at once; an int k returns frame k alone (``0`` the first, ``-1``
the last). ``frames(images)`` turns grids back into (B, F, 3, H, W). Rewards declared
``space = "video"`` (``steer.rewards.video``: an image reward per frame with a reduction,
``hps@frames:min``; ``temporal_consistency``) read the frames themselves (``video_of``), not the grid;
an image reward still scores the grid. ``frame_rate`` is what ``steer generate`` writes videos at.
"""
from __future__ import annotations

import math
import operator
from abc import abstractmethod
from typing import Optional, Union

import torch
from torch import Tensor

from steer.errors import SteerError
from steer.pipelines.guided import GuidedProcess


def frame_count(name: str, num_frames, temporal: int) -> int:
    """``num_frames`` as an int 1 + k·``temporal`` (what the video VAE decodes to); else an error naming the fix."""
    try:
        n = None if isinstance(num_frames, bool) else operator.index(num_frames)
    except TypeError:
        n = None
    if n is None or n < 1 or (n - 1) % temporal:
        near = 1 + temporal * max(0, round(((n or 1) - 1) / temporal))
        raise SteerError(f"{name}: num_frames={num_frames!r} must be 1 + a multiple of {temporal} (the VAE's "
                         f"temporal factor); pass num_frames={near}")
    return int(n)


def grid_shape(num_frames: int) -> tuple[int, int]:
    """(rows, cols) of the frame grid: ceil(√F) columns, as many rows as needed."""
    cols = math.ceil(math.sqrt(num_frames))
    return math.ceil(num_frames / cols), cols


class VideoProcess(GuidedProcess):
    """A guided ``Process`` whose samples are videos of ``num_frames`` frames."""

    num_frames: int = 1
    frame_layout: Union[str, int] = "grid"
    frame_rate: float = 16.0  # frames per second of a written video (Wan's; LTX-Video: its ``frame_rate``)

    def _set_frames(self, num_frames: int, frame_layout) -> None:
        self.num_frames = num_frames
        if frame_layout != "grid" and (isinstance(frame_layout, bool) or not isinstance(frame_layout, int)
                                       or not -num_frames <= frame_layout < num_frames):
            raise SteerError(f"{self.name}: frame_layout={frame_layout!r} must be 'grid' or a frame index in "
                             f"[-{num_frames}, {num_frames - 1}]; pass frame_layout='grid' or e.g. 0")
        self.frame_layout = frame_layout

    @abstractmethod
    def decode_video(self, x0: Tensor) -> Tensor:
        """Latents (B, *latent_shape) -> frames (B, F, 3, H, W) in [0, 1], differentiable."""

    def decode(self, x0: Tensor) -> Tensor:
        """Latents -> one image per video (B, 3, H', W') in [0, 1] laid out by ``frame_layout``."""
        return self.layout(self.decode_video(x0))

    def layout(self, video: Tensor) -> Tensor:
        """Frames (B, F, 3, H, W) -> one image per video (B, 3, H', W') laid out by ``frame_layout``."""
        return lay_out(video, self.frame_layout)

    def frames(self, images: Tensor) -> Tensor:
        """Frame grids from ``decode`` (B, 3, rows·H, cols·W) -> frames (B, F, 3, H, W)."""
        return frames_of_grid(self.name, images, self.num_frames, self.frame_layout)


def lay_out(video: Tensor, frame_layout) -> Tensor:
    """Frames (B, F, 3, H, W) -> one image per video: frame ``frame_layout`` (B, 3, H, W), or for ``"grid"`` all
    F frames tiled row-major in ``grid_shape(F)`` cells, empty cells black (B, 3, rows·H, cols·W)."""
    if frame_layout != "grid":
        return video[:, frame_layout]  # (B, 3, H, W)
    B, F, C, H, W = video.shape
    rows, cols = grid_shape(F)
    pad = video.new_zeros(B, rows * cols - F, C, H, W)
    cells = torch.cat([video, pad], dim=1).reshape(B, rows, cols, C, H, W)
    return cells.permute(0, 3, 1, 4, 2, 5).reshape(B, C, rows * H, cols * W)  # (B, 3, rows·H, cols·W)


def frames_of_grid(name: str, images: Tensor, num_frames: int, frame_layout="grid") -> Tensor:
    """``lay_out``'s grids (B, 3, rows·H, cols·W) -> the frames (B, F, 3, H, W); ``name`` heads the errors."""
    if frame_layout != "grid":
        raise SteerError(f"{name}: frame_layout={frame_layout!r} keeps one frame; decode the "
                         f"latents with process.decode_video(result.latents) for the whole video")
    rows, cols = grid_shape(num_frames)
    B, C, GH, GW = images.shape
    if GH % rows or GW % cols:
        raise SteerError(f"{name}: images of shape {tuple(images.shape)} are not {rows}x{cols} frame grids; "
                         f"pass what process.decode returned")
    cells = images.reshape(B, C, rows, GH // rows, cols, GW // cols).permute(0, 2, 4, 1, 3, 5)
    return cells.reshape(B, rows * cols, C, GH // rows, GW // cols)[:, :num_frames]  # (B, F, 3, H, W)


def video_of(process, images: Tensor, latents: Optional[Tensor] = None) -> Tensor:
    """The frames (B, F, 3, H, W) behind ``images = process.decode(latents)``: read back from the frame
    grid (exact, differentiable, no second decode), else decoded from ``latents`` (``frame_layout=k``).
    A process that makes images is a one-line error naming the fix."""
    if process is None:
        raise SteerError("a video reward (space='video') reads frames (B, F, 3, H, W); pass the video process "
                         "that decoded the images (process=)")
    if not hasattr(process, "decode_video"):  # a VideoProcess, or steer.wrap's decoder of a video pipeline
        raise SteerError(f"{getattr(process, 'name', type(process).__name__)} makes images, and a video reward "
                         f"(space='video') reads frames (B, F, 3, H, W): use an image reward, or a video pipeline")
    if process.frame_layout == "grid":
        return process.frames(images)  # (B, F, 3, H, W)
    if latents is None:
        raise SteerError(f"{process.name}: frame_layout={process.frame_layout!r} keeps one frame, and a video reward "
                         f"reads them all; use frame_layout='grid'")
    return process.decode_video(latents)  # (B, F, 3, H, W)
