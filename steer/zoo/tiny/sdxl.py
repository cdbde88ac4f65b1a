"""Tiny Stable Diffusion XL pipeline (random init, real classes): 32x32 images, 4x8x8 latents.

``build_pipeline()``: UNet2DConditionModel with SDXL's ``text_time`` added conditioning,
two text encoders (CLIPTextModel and CLIPTextModelWithProjection, 1000-token offline tokenizer),
AutoencoderKL (factor 4, SDXL's scaling factor) and a DDIMScheduler with SDXL's schedule.
"""
from __future__ import annotations

from steer.zoo.tiny._common import frozen, seeded, tiny_clip_text_config, tiny_clip_tokenizer, tiny_vae

_HIDDEN = 32  # both text encoders; the UNet cross-attends to their concatenation (64)
_TIME_EMBED = 8  # addition_time_embed_dim; 6 time ids


def build_pipeline(seed: int = 0):
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=2 * _HIDDEN,
            attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=1,
            addition_embed_type="text_time", addition_time_embed_dim=_TIME_EMBED,
            projection_class_embeddings_input_dim=6 * _TIME_EMBED + _HIDDEN, norm_num_groups=32,
        )
        vae = tiny_vae(scaling_factor=0.13025, force_upcast=True)
        text_encoder = CLIPTextModel(tiny_clip_text_config(_HIDDEN))
        text_encoder_2 = CLIPTextModelWithProjection(tiny_clip_text_config(_HIDDEN, projection_dim=_HIDDEN))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
    )
    frozen(unet, vae, text_encoder, text_encoder_2)
    tokenizer = tiny_clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
