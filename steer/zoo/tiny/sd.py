"""Tiny Stable Diffusion 1.x/2.x pipeline (random init, real classes): 32x32 images, 4x8x8 latents.

``build_pipeline(prediction_type="epsilon" | "v_prediction")``: UNet2DConditionModel (32, 64),
AutoencoderKL (factor 4), CLIPTextModel (2 layers, 1000-token offline tokenizer), and a
DDIMScheduler with SD's own schedule (scaled_linear betas, steps_offset=1, no clipping).
"""
from __future__ import annotations

from steer.zoo.tiny._common import frozen, seeded, tiny_clip_text_config, tiny_clip_tokenizer, tiny_vae


def build_pipeline(prediction_type: str = "epsilon", seed: int = 0):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    with seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=32,
        )
        vae = tiny_vae()
        text_encoder = CLIPTextModel(tiny_clip_text_config())
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )
    frozen(unet, vae, text_encoder)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
