"""Which adapter wraps which diffusers pipeline: ``FAMILIES``, ``adapter_for`` and ``from_pipe``
(re-exported by ``steer.pipelines``; ``loading`` reads them too)."""
from __future__ import annotations

import importlib

from steer.pipelines.base import Process

# diffusers pipeline class name -> "module:AdapterClass" (imported lazily: diffusers is heavy)
FAMILIES: dict[str, str] = {
    "StableDiffusionPipeline": "steer.pipelines.sd:StableDiffusionProcess",
    "StableDiffusionXLPipeline": "steer.pipelines.sdxl:StableDiffusionXLProcess",
    "StableDiffusion3Pipeline": "steer.pipelines.sd3:StableDiffusion3Process",
    "FluxPipeline": "steer.pipelines.flux:FluxProcess",
    "PixArtAlphaPipeline": "steer.pipelines.pixart:PixArtProcess",
    "PixArtSigmaPipeline": "steer.pipelines.pixart:PixArtProcess",
    "DDPMPipeline": "steer.pipelines.ddpm:PixelProcess",
    "DDIMPipeline": "steer.pipelines.ddpm:PixelProcess",
    "QwenImagePipeline": "steer.pipelines.qwenimage:QwenImageProcess",
    "Flux2Pipeline": "steer.pipelines.flux2:Flux2Process",
    "Flux2KleinPipeline": "steer.pipelines.flux2:Flux2Process",
    "SanaPipeline": "steer.pipelines.sana:SanaProcess",
    "ZImagePipeline": "steer.pipelines.z_image:ZImageProcess",
    "WanPipeline": "steer.pipelines.wan:WanProcess",
    "LTXPipeline": "steer.pipelines.ltx:LTXProcess",
}


def adapter_for(pipe) -> type:
    """The ``Process`` class for a diffusers pipeline object (walking its class hierarchy)."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in FAMILIES:
            module, name = FAMILIES[cls.__name__].split(":")
            return getattr(importlib.import_module(module), name)
    raise TypeError(
        f"steer has no adapter for {type(pipe).__name__}. Supported families: "
        f"{', '.join(sorted(FAMILIES))}. For another model, subclass steer.pipelines.Process "
        f"(prepare / denoise / decode / schedule) and pass the process instead of the pipeline."
    )


def from_pipe(pipe, **options) -> Process:
    """Wrap a diffusers pipeline (or return a ``Process`` unchanged) with the family's adapter."""
    if isinstance(pipe, Process):
        if options:
            raise TypeError(f"options {sorted(options)} cannot be applied to an existing Process; "
                            f"build the process with them instead")
        return pipe
    adapter = adapter_for(pipe)
    check_video_options(adapter, type(pipe).__name__, options)
    return adapter(pipe, **options)


def check_video_options(adapter: type, pipeline: str, options) -> None:
    """``num_frames`` given to a family that makes images: a one-line error naming the fix."""
    if options.get("num_frames") is not None and not hasattr(adapter, "decode_video"):
        from steer.errors import SteerError

        raise SteerError(f"num_frames is an option of video pipelines (Wan, LTX-Video); {pipeline} makes images: "
                         f"drop num_frames (--num-frames)")
