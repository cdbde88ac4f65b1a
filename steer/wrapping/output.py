"""What ``steer.wrap`` reads off a pipeline's call and writes back into its output.

``call_options``: the call's size (height / width: FLUX's and Qwen-Image's packed latents need them to unpack;
num_frames: LTX-Video's; the pipeline's own defaults when unset), LTX-Video's ``decode_timestep`` and the
default ``output_type``, read from the call's keywords, else the pipeline's signature. ``latents_field``:
which field of the pipeline's output holds its latents (``images``, or ``frames`` for a video pipeline);
``final_latents``: the latents to decode, that field's, or the loop's last latents for a pipeline whose
``output_type="latent"`` returns something else (``decoding.LATENT_OUTPUTS``: FLUX.2-klein's VAE latent, which
is given back in that form when ``output_type="latent"`` is asked). ``postprocess``: the kept samples as the
pipeline itself returns them: images through its ``image_processor`` (and safety checker), videos (B, 3, F, H,
W) through its ``video_processor`` — one video per prompt, in the pipeline's own ``frames`` field.
"""
from __future__ import annotations

import dataclasses
import inspect

from steer.errors import SteerError
from steer.pipelines import decoding

# the pipeline's "per prompt" count, which the method's particle count K takes (image / video pipelines)
PER_PROMPT = ("num_images_per_prompt", "num_videos_per_prompt")


def per_prompt_argument(pipe):
    """The name of ``pipe``'s per-prompt count argument, or None when its call has none."""
    params = inspect.signature(pipe.__call__).parameters
    return next((k for k in PER_PROMPT if k in params), None)


def _default(pipe, name: str):
    param = inspect.signature(pipe.__call__).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def call_options(pipe, kwargs) -> dict:
    """height / width / num_frames of the call (the pipeline's defaults if unset) and LTX-Video's
    ``decode_timestep``, as ``steer.wrapping.decode.decoder_for`` takes them."""
    size = getattr(pipe, "default_sample_size", None)
    factor = getattr(pipe, "vae_scale_factor", None)
    fallback = None if size is None or factor is None else size * factor
    options = {k: kwargs.get(k) or _default(pipe, k) or fallback for k in ("height", "width")}
    options["num_frames"] = kwargs.get("num_frames") or _default(pipe, "num_frames")
    if "decode_timestep" in inspect.signature(pipe.__call__).parameters:
        options["decode_timestep"] = _decode_timestep(pipe, kwargs)
    return options


def _decode_timestep(pipe, kwargs) -> float:
    """LTX-Video's ``decode_timestep``; noise blended in at decode (``decode_noise_scale``) is refused, as
    ``steer.pipelines.ltx`` refuses it: steer decodes deterministically."""
    name = type(pipe).__name__
    timestep = kwargs.get("decode_timestep", _default(pipe, "decode_timestep")) or 0.0
    scale = kwargs.get("decode_noise_scale")
    if isinstance(timestep, (list, tuple)) or isinstance(scale, (list, tuple)):
        raise SteerError(f"steer.wrap: {name}: pass decode_timestep / decode_noise_scale as one number, not a list")
    scale = timestep if scale is None else scale
    conditioned = getattr(getattr(getattr(pipe, "vae", None), "config", None), "timestep_conditioning", False)
    if conditioned and float(scale) != 0:
        raise SteerError(f"steer.wrap: {name}: decode_noise_scale={float(scale):g} blends fresh noise into the "
                         f"latents at decode, and steer decodes deterministically; pass decode_noise_scale=0")
    return float(timestep)


def output_type(pipe, kwargs) -> str:
    """The call's ``output_type``, else the pipeline's default (``"pil"`` for images, ``"np"`` for Wan / LTX)."""
    return kwargs.pop("output_type", None) or _default(pipe, "output_type") or "pil"


def latents_field(out, video: bool) -> str:
    """The field of the pipeline's output that holds its latents under ``output_type="latent"``."""
    names = {f.name for f in dataclasses.fields(out)}
    field = "frames" if video else "images"
    if field not in names:
        kind = "a video pipeline (frames)" if video else "an image pipeline (images)"
        raise SteerError(f"steer.wrap: {type(out).__name__} has no {field} field, which {kind} returns; pass "
                         f"decode= only for image pipelines, or use steer.generate")
    return field


def _latent_output(pipe):
    """What ``pipe`` returns for ``output_type="latent"`` when that is not the loop's latents, else None."""
    return next((decoding.LATENT_OUTPUTS[c.__name__] for c in type(pipe).__mro__
                 if c.__name__ in decoding.LATENT_OUTPUTS), None)


def final_latents(pipe, out, field: str, loop_latents):
    """The latents to decode (P·K, ...): the output's ``field``, or the loop's last for ``LATENT_OUTPUTS``."""
    if _latent_output(pipe) is None or loop_latents is None:
        return getattr(out, field)
    return loop_latents


def postprocess(pipe, raw, latents, output_type: str, field: str, decoder) -> dict:
    """The kept samples as the pipeline itself returns them, as fields of its output class."""
    if output_type == "latent":
        if _latent_output(pipe) == "flux2_vae_latents":  # FLUX.2-klein: the VAE latent (B, C, 2h, 2w)
            patches = decoding.flux2_patches(pipe, latents, decoder.height, decoder.width)
            return {field: decoding.flux2_vae_latents(pipe, patches)}
        return {field: latents}
    if field == "frames":  # raw (P, 3, F, H, W) in [-1, 1]
        return {"frames": pipe.video_processor.postprocess_video(raw, output_type=output_type)}
    fields = {}
    nsfw = None
    if getattr(pipe, "safety_checker", None) is not None and hasattr(pipe, "run_safety_checker"):
        raw, nsfw = pipe.run_safety_checker(raw, raw.device, raw.dtype)
        fields["nsfw_content_detected"] = nsfw
    denorm = None if nsfw is None else [not flagged for flagged in nsfw]
    fields["images"] = pipe.image_processor.postprocess(raw, output_type=output_type, do_denormalize=denorm)
    return fields
