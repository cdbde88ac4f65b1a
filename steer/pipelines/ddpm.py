"""Pixel-space diffusion (``DDPMPipeline``, ``DDIMPipeline``: a ``UNet2DModel`` on images) as a ``Process``.

The models are unconditional: ``prepare(prompts)`` only fixes how many rows (problems) there are,
and there is no guidance. The chain is DDIM on the schedule read off ``pipe.scheduler.config``
(``ddim_schedule``), with ``clip_sample`` honoured. ``noise_level=0`` reproduces ``DDIMPipeline``
(eta=0); ``noise_level=1`` is DDPM-like ancestral sampling (Song et al. 2021, eq. 16), which equals
``DDPMPipeline``'s sampler when x̂0 is not clipped. Images are the states themselves in [-1, 1].
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

from steer.pipelines import checks
from steer.pipelines.base import Process
from steer.pipelines.ddim_schedule import ddim_schedule
from steer.types import Cond


class PixelProcess(Process):
    """``DDPMPipeline`` / ``DDIMPipeline`` -> ``Process``. ``guidance_scale`` and ``negative_prompt``
    exist only for a uniform signature: an unconditional model cannot be guided."""

    name = "PixelProcess"

    def __init__(self, pipe, *, num_inference_steps: int = 50, guidance_scale: Optional[float] = None,
                 height: Optional[int] = None, width: Optional[int] = None, negative_prompt=None,
                 batch_size: Optional[int] = None):
        if (guidance_scale is not None and guidance_scale > 1) or negative_prompt is not None:
            raise ValueError(f"{self.name}: {type(pipe).__name__} is unconditional, so it has no classifier-free "
                             f"guidance; leave guidance_scale and negative_prompt unset")
        config = pipe.unet.config
        if config.out_channels != config.in_channels or getattr(config, "num_class_embeds", None) is not None:
            raise ValueError(f"{self.name}: only unconditional UNet2DModels that predict ε/v/x0 with as many channels "
                             f"as they read are supported (got in={config.in_channels}, out={config.out_channels}, "
                             f"num_class_embeds={getattr(config, 'num_class_embeds', None)}); wrap other models "
                             f"by subclassing steer.pipelines.Process")
        self.unet = pipe.unet
        checks.bind_common(self, pipe, pipe.unet, num_inference_steps=num_inference_steps, batch_size=batch_size)
        factor = 2 ** (len(config.block_out_channels) - 1)
        self.height, self.width = checks.image_size(self.name, config.sample_size, factor, height, width)
        self.latent_shape = (config.in_channels, self.height, self.width)
        self.schedule = ddim_schedule(pipe.scheduler.config, num_inference_steps, device=self.device)

    def prepare(self, prompts: Sequence[str] | str) -> Cond:
        prompts = checks.prompt_list(self.name, prompts)
        return Cond(prompts=tuple(prompts), tensors={}, guidance_scale=1.0)

    def denoise(self, x: Tensor, i: int, cond: Cond) -> Tensor:
        t = self.schedule.timesteps[i]
        return self.unet(x.to(self.dtype), t, return_dict=False)[0].float()  # (B, C, H, W)

    def decode(self, x0: Tensor) -> Tensor:
        checks.latents(self.name, x0, self.latent_shape)
        return (x0.float() / 2 + 0.5).clamp(0, 1)  # (B, 3, H, W)
