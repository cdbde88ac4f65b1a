"""Latents -> images: one rule per latent layout, used by a family's adapter (``Process.decode``) and by
``steer.wrap`` (``steer.wrapping.decode``), so the two cannot drift apart.

A rule is ``raw(rule, pipe, x, height, width)``: latents (B, ...) -> the VAE's output (B, 3, H, W),
about [-1, 1] (what a pipeline's ``image_processor`` post-processes); ``to_unit`` maps it to [0, 1]
(the ``Process.decode`` contract). Each rule is the decode line of the diffusers pipelines named for
it (read from diffusers 0.42):

================  ===================================================  ==========================================
rule              VAE input z from latents x                           pipelines
================  ===================================================  ==========================================
``scaled``        z = x / scaling_factor                               SD 1.x/2.x (+ img2img, ControlNet), AuraFlow,
                                                                       CogView3-Plus, CogView4, HunyuanDiT
``scaled_shift``  z = x / scaling_factor + shift_factor (none when     SD3 (+ img2img), Lumina2, PixArt, Sana,
                  the VAE has no ``shift_factor``)                     Sana-Sprint, Z-Image
``sdxl``          z = x·std / scaling_factor + mean where the VAE has  SDXL (+ img2img, ControlNet), Kolors
                  ``latents_mean`` / ``latents_std``, else ``scaled``;
                  an fp16 VAE with ``force_upcast`` decodes in float32
``packed``        FLUX's ``_unpack_latents`` (B, h·w/4, 4C) ->         FLUX.1 (+ img2img)
                  (B, C, h, w), then ``scaled_shift``
``qwenimage``     ``_unpack_latents`` (B, h/2·w/2, 4z) ->              Qwen-Image
                  (B, z, 1, h, w), z = x / (1/std) + mean (the
                  VAE's ``latents_mean`` / ``latents_std``), the
                  one frame of the decoded video
``flux2``         (B, h·w, 4C) tokens -> (B, 4C, h, w) patches (row-     FLUX.2 dev and klein
                  major, as ``_prepare_latent_ids``), the VAE's
                  batch-norm statistics undone (x·√(var + eps) +
                  mean), ``_unpatchify_latents`` -> (B, C, 2h, 2w)
``wan``           z = x / (1/std) + mean on (B, C, f, h, w); a video   Wan 2.1 / 2.2 (text-to-video)
``ltx``           ``_unpack_latents`` (B, f·h·w, C) -> (B, C, f, h,    LTX-Video (text-to-video)
                  w), ``_denormalize_latents`` (x·std / scaling +
                  mean); a video, ``decode_timestep`` when the
                  decoder is timestep-conditioned
================  ===================================================  ==========================================

The video rules (``VIDEO_RULES``) give the VAE's video (B, 3, F, H, W) in [-1, 1] (what a pipeline's
``video_processor.postprocess_video`` takes); ``video_to_unit`` maps it to frames (B, F, 3, H, W) in
[0, 1] (the ``VideoProcess.decode_video`` contract). ``ltx`` needs ``num_frames`` (the unpacked latent
size) and ``decode_timestep``; ``packed``, ``qwenimage`` and ``flux2`` need ``height`` / ``width``.
``Flux2KleinPipeline``'s ``output_type="latent"`` is the VAE latent (after ``flux2_vae_latents``), not the
loop's tokens (``LATENT_OUTPUTS``): steer.wrap decodes the loop's last latents there.

Which rule a pipeline uses: its adapter's ``latent_rule`` (``steer.pipelines.families.FAMILIES``), else
its class (or a base class) in ``PIPELINES`` (pipelines steer.wrap steers without an adapter). A new
family sets ``latent_rule`` on its adapter and calls ``raw`` in its ``decode``.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import Tensor


def scaled(vae, x: Tensor) -> Tensor:
    """z = x / scaling_factor -> VAE output (B, 3, H, W) in about [-1, 1]."""
    z = x.to(vae.dtype) / vae.config.scaling_factor
    return vae.decode(z, return_dict=False)[0]


def scaled_shift(vae, x: Tensor) -> Tensor:
    """z = x / scaling_factor + shift_factor (no shift when the VAE has none) -> VAE output."""
    config = vae.config
    z = x.to(vae.dtype) / config.scaling_factor
    shift = getattr(config, "shift_factor", None)
    if shift is not None:
        z = z + shift
    return vae.decode(z, return_dict=False)[0]


def sdxl_unscale(config, z: Tensor) -> Tensor:
    """SDXL's latent -> VAE latent: z·std / scaling_factor + mean when the config has both, else z / scaling_factor."""
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is None or std is None:
        return z / config.scaling_factor
    mean = torch.tensor(mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
    std = torch.tensor(std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
    return z * std / config.scaling_factor + mean


def needs_upcast(vae) -> bool:
    """An fp16 VAE whose config asks to run in float32 (``force_upcast``), as diffusers' SDXL pipelines do."""
    return vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))


def sdxl(vae, x: Tensor) -> Tensor:
    """``sdxl_unscale`` then the VAE, in float32 when ``needs_upcast`` (the VAE is cast back afterwards)."""
    upcast = needs_upcast(vae)
    z = sdxl_unscale(vae.config, x.to(torch.float32 if upcast else vae.dtype))  # (B, 4, h, w)
    if upcast:
        vae.to(torch.float32)
    try:
        return vae.decode(z, return_dict=False)[0]  # (B, 3, H, W) in [-1, 1]
    finally:
        if upcast:
            vae.to(torch.float16)


def packed(pipe, x: Tensor, height: Optional[int], width: Optional[int]) -> Tensor:
    """FLUX.1: packed latents (B, h·w/4, 4C) -> (B, C, h, w) by the pipeline's ``_unpack_latents``, then
    ``scaled_shift``."""
    return scaled_shift(pipe.vae, pipe._unpack_latents(x, height, width, pipe.vae_scale_factor))


def flux2_vae_latents(pipe, patches: Tensor) -> Tensor:
    """FLUX.2's normalized patches (B, 4C, h, w) -> the VAE's latent (B, C, 2h, 2w): x·√(running_var + eps)
    + running_mean of the VAE's batch norm, then ``_unpatchify_latents``."""
    vae = pipe.vae
    z = patches.to(vae.dtype)
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z.device, z.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(z.device, z.dtype)
    return pipe._unpatchify_latents(z * std + mean)


def flux2_patches(pipe, x: Tensor, height: int, width: int) -> Tensor:
    """FLUX.2's tokens (B, h·w, 4C), row-major as ``_prepare_latent_ids`` lays them out -> patches (B, 4C, h, w)."""
    factor = 2 * pipe.vae_scale_factor
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height // factor, width // factor)


def flux2(pipe, x: Tensor, height: int, width: int) -> Tensor:
    """FLUX.2: tokens (B, h·w, 4C) -> ``flux2_patches`` -> ``flux2_vae_latents`` -> VAE output (B, 3, H, W)."""
    return pipe.vae.decode(flux2_vae_latents(pipe, flux2_patches(pipe, x, height, width)), return_dict=False)[0]


def wan_denormalize(vae, z: Tensor) -> Tensor:
    """Wan's VAE latent: z / (1 / latents_std) + latents_mean per channel (B, C, F, h, w), as WanPipeline and
    QwenImagePipeline write it (the same VAE, ``AutoencoderKLWan``)."""
    config = vae.config
    z = z.to(vae.dtype)
    mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(z.device, z.dtype)
    inv_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(z.device, z.dtype)
    return z / inv_std + mean


def qwenimage(pipe, x: Tensor, height: Optional[int], width: Optional[int]) -> Tensor:
    """Qwen-Image: packed (B, h/2·w/2, 4z) -> (B, z, 1, h, w), ``wan_denormalize``, the decoded video's one
    frame (B, 3, H, W) in [-1, 1]."""
    z = pipe._unpack_latents(x, height, width, pipe.vae_scale_factor)  # (B, z, 1, h, w)
    return pipe.vae.decode(wan_denormalize(pipe.vae, z), return_dict=False)[0][:, :, 0]


def wan(vae, x: Tensor) -> Tensor:
    """Wan: latents (B, C, f, h, w) -> ``wan_denormalize`` -> the VAE's video (B, 3, F, H, W) in [-1, 1]."""
    return vae.decode(wan_denormalize(vae, x), return_dict=False)[0]


def ltx(pipe, x: Tensor, height: int, width: int, num_frames: int, decode_timestep: float = 0.0) -> Tensor:
    """LTX-Video: packed (B, f·h·w, C) -> (B, C, f, h, w) by ``_unpack_latents``, ``_denormalize_latents``, the
    VAE (given ``decode_timestep`` when its decoder is timestep-conditioned) -> video (B, 3, F, H, W)."""
    vae, patch, patch_t = pipe.vae, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
    spatial, temporal = pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio
    f, h, w = (num_frames - 1) // temporal + 1, height // spatial, width // spatial
    z = pipe._unpack_latents(x, f // patch_t, h // patch, w // patch, patch, patch_t)  # (B, C, f, h, w)
    z = pipe._denormalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor).to(vae.dtype)
    timestep = None
    if vae.config.timestep_conditioning:
        timestep = torch.full((z.shape[0],), float(decode_timestep), device=z.device, dtype=z.dtype)  # (B,)
    return vae.decode(z, timestep, return_dict=False)[0]  # (B, 3, F, H, W)


RULES = ("scaled", "scaled_shift", "sdxl", "packed", "qwenimage", "flux2", "wan", "ltx")
# pipelines whose output_type="latent" is not the loop's latents: class name -> what it returns instead
LATENT_OUTPUTS = {"Flux2KleinPipeline": "flux2_vae_latents"}
VIDEO_RULES = ("wan", "ltx")  # rules whose output is a video (B, 3, F, H, W)

# pipelines without an adapter that steer.wrap steers: class name -> rule
PIPELINES: dict[str, str] = {
    **dict.fromkeys(("StableDiffusionImg2ImgPipeline", "StableDiffusionControlNetPipeline",
                     "StableDiffusionControlNetImg2ImgPipeline", "AuraFlowPipeline", "CogView3PlusPipeline",
                     "CogView4Pipeline", "HunyuanDiTPipeline"), "scaled"),
    **dict.fromkeys(("StableDiffusion3Img2ImgPipeline", "Lumina2Pipeline", "SanaSprintPipeline"), "scaled_shift"),
    **dict.fromkeys(("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLControlNetPipeline", "KolorsPipeline"),
                    "sdxl"),
    **dict.fromkeys(("FluxImg2ImgPipeline",), "packed"),
}


def raw(rule: str, pipe, x: Tensor, height: Optional[int] = None, width: Optional[int] = None, *,
        num_frames: Optional[int] = None, decode_timestep: float = 0.0) -> Tensor:
    """Latents (B, ...) -> the VAE's images (B, 3, H, W) (a video rule: videos (B, 3, F, H, W)), about
    [-1, 1], by ``rule``."""
    if rule == "packed":
        return packed(pipe, x, height, width)
    if rule == "qwenimage":
        return qwenimage(pipe, x, height, width)
    if rule == "flux2":
        return flux2(pipe, x, height, width)
    if rule == "ltx":
        return ltx(pipe, x, height, width, num_frames, decode_timestep)
    return {"scaled": scaled, "scaled_shift": scaled_shift, "sdxl": sdxl, "wan": wan}[rule](pipe.vae, x)


def to_unit(image: Tensor) -> Tensor:
    """VAE output in [-1, 1] -> [0, 1], float32 (the pipelines' ``denormalize``)."""
    return (image.float() / 2 + 0.5).clamp(0, 1)


def video_to_unit(video: Tensor) -> Tensor:
    """A video rule's output (B, 3, F, H, W) in [-1, 1] -> frames (B, F, 3, H, W) in [0, 1], float32."""
    return (video.float().transpose(1, 2) * 0.5 + 0.5).clamp(0, 1)


def rule_for(pipe) -> Optional[str]:
    """The rule of ``pipe``: its adapter's ``latent_rule``, else its class or nearest base in ``PIPELINES``;
    None when steer knows no rule for it."""
    from steer.pipelines.families import FAMILIES

    for cls in type(pipe).__mro__:
        if cls.__name__ in FAMILIES:
            module, name = FAMILIES[cls.__name__].split(":")
            rule = getattr(getattr(importlib.import_module(module), name), "latent_rule", None)
            if rule is not None:
                return rule
        if cls.__name__ in PIPELINES:
            return PIPELINES[cls.__name__]
    return None
