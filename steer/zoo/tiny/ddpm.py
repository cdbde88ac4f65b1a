"""Tiny pixel-space diffusion pipelines (random init, real classes): UNet2DModel on 3x32x32 images.

``build_pipeline(pipeline="ddim" | "ddpm", clip_sample=True)``: a ``DDIMPipeline`` (default) or a
``DDPMPipeline`` around the same UNet2DModel (32, 64) and the standard linear-beta schedule.
"""
from __future__ import annotations

from steer.zoo.tiny._common import frozen, seeded


def build_pipeline(pipeline: str = "ddim", clip_sample: bool = True, seed: int = 0):
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

    if pipeline not in ("ddim", "ddpm"):
        raise ValueError(f"pipeline must be 'ddim' or 'ddpm', got {pipeline!r}")
    with seeded(seed):
        unet = UNet2DModel(
            sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32,
        )
    frozen(unet)
    if pipeline == "ddim":
        return DDIMPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=clip_sample))
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(clip_sample=clip_sample))
