"""Tiny FLUX.1 pipeline (random init, real classes): 32x32 images, 16x8x8 latents packed to (16, 64).

``build_pipeline(guidance_embeds=True)``: FluxTransformer2DModel (1 double + 1 single block) with a
guidance embedding (dev-type) or without (``guidance_embeds=False``, schnell-type), AutoencoderKL
(factor 4, 16 latent channels, FLUX's scaling and shift factors), CLIPTextModel (pooled, 32-d) and
T5EncoderModel (32-d), and FlowMatchEulerDiscreteScheduler configured as the released models:
dynamic shifting for dev, a plain ``shift=1.0`` for schnell.
"""
from __future__ import annotations

from steer.zoo.tiny._common import frozen, seeded, tiny_clip_text_config, tiny_clip_tokenizer
from steer.zoo.tiny._t5 import tiny_t5_encoder, tiny_t5_tokenizer

LATENT_CHANNELS = 16
T5_DIM = 32


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    )


def _scheduler(dev: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if dev:  # FLUX.1-dev's scheduler_config.json
        return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                               max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)  # FLUX.1-schnell


def build_pipeline(guidance_embeds: bool = True, seed: int = 0):
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    with seeded(seed):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_DIM,
            pooled_projection_dim=32, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
        )
        vae = _vae()
        text_encoder = CLIPTextModel(tiny_clip_text_config(32, 32))
        text_encoder_2 = tiny_t5_encoder(T5_DIM)
    frozen(transformer, vae, text_encoder, text_encoder_2)
    return FluxPipeline(
        scheduler=_scheduler(guidance_embeds), vae=vae, text_encoder=text_encoder,
        tokenizer=tiny_clip_tokenizer(), text_encoder_2=text_encoder_2, tokenizer_2=tiny_t5_tokenizer(),
        transformer=transformer,
    )
