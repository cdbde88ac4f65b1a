"""Tiny Stable Diffusion 3 pipeline (random init, real classes): 32x32 images, 16x8x8 latents.

``build_pipeline(with_t5=True, dynamic_shifting=False)``: SD3Transformer2DModel (2 joint blocks,
patch 2), AutoencoderKL (factor 4, 16 latent channels, SD3's scaling and shift factors), two
CLIPTextModelWithProjection (32-d, offline 1000-token tokenizer), T5EncoderModel (64-d, offline
Unigram tokenizer; ``with_t5=False`` leaves ``text_encoder_3=None`` as diffusers allows) and
FlowMatchEulerDiscreteScheduler with SD3's ``shift=3.0`` (or SD3.5-style dynamic shifting).
"""
from __future__ import annotations

from steer.zoo.tiny._common import frozen, seeded, tiny_clip_text_config, tiny_clip_tokenizer
from steer.zoo.tiny._t5 import tiny_t5_encoder, tiny_t5_tokenizer

CLIP_DIM = 32  # each CLIP: hidden 32, projection 32 -> pooled 64, token embeddings 2x32 = 64
JOINT_DIM = 64  # T5 d_model; CLIP token embeddings are zero-padded to it by the pipeline


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8,
        scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
    )


def build_pipeline(with_t5: bool = True, dynamic_shifting: bool = False, seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    with seeded(seed):
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
            attention_head_dim=8, num_attention_heads=4, joint_attention_dim=JOINT_DIM,
            caption_projection_dim=32, pooled_projection_dim=2 * CLIP_DIM, pos_embed_max_size=16,
        )
        vae = _vae()
        text_encoder = CLIPTextModelWithProjection(tiny_clip_text_config(CLIP_DIM, CLIP_DIM))
        text_encoder_2 = CLIPTextModelWithProjection(tiny_clip_text_config(CLIP_DIM, CLIP_DIM))
        text_encoder_3 = tiny_t5_encoder(JOINT_DIM) if with_t5 else None
    if dynamic_shifting:  # SD3.5-style: mu from the image sequence length
        scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.16,
                                                    base_image_seq_len=256, max_image_seq_len=4096)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    frozen(transformer, vae, text_encoder, text_encoder_2, text_encoder_3)
    clip_tok = tiny_clip_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae,
        text_encoder=text_encoder, tokenizer=clip_tok, text_encoder_2=text_encoder_2, tokenizer_2=clip_tok,
        text_encoder_3=text_encoder_3, tokenizer_3=tiny_t5_tokenizer() if with_t5 else None,
    )
