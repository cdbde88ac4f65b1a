"""Tiny PixArt-α / PixArt-Σ pipelines (random init, real classes): 32x32 images, 4x8x8 latents.

``build_pipeline(variant="alpha" | "sigma", additional_conditions=False)``: PixArtTransformer2DModel
(2 blocks, patch 2) with learned sigma (``out_channels`` = 2 x latent channels), AutoencoderKL (factor
4), T5EncoderModel (32-d, offline Unigram tokenizer) and a DDIMScheduler with PixArt's training
schedule (linear betas 1e-4..0.02, ε-prediction). ``additional_conditions=True`` gives the α
transformer ``sample_size=128`` like PixArt-XL-2-1024-MS, so the pipeline adds the resolution and
aspect-ratio embeddings (pass ``height``/``width`` explicitly: the default would be 512x512).
"""
from __future__ import annotations

from steer.zoo.tiny._common import frozen, seeded, tiny_vae
from steer.zoo.tiny._t5 import tiny_t5_encoder, tiny_t5_tokenizer

T5_DIM = 32


def build_pipeline(variant: str = "alpha", additional_conditions: bool = False, seed: int = 0):
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel

    pipelines = {"alpha": PixArtAlphaPipeline, "sigma": PixArtSigmaPipeline}
    if variant not in pipelines:
        raise ValueError(f"variant must be 'alpha' or 'sigma', got {variant!r}")
    if additional_conditions and variant != "alpha":
        raise ValueError("additional_conditions (resolution / aspect-ratio embeddings) exist only for PixArt-α")
    with seeded(seed):
        # inner dim 24: divisible by 3 for the α resolution + aspect-ratio embeddings
        transformer = PixArtTransformer2DModel(
            num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8, num_layers=2,
            cross_attention_dim=24, caption_channels=T5_DIM, sample_size=128 if additional_conditions else 8,
            patch_size=2, norm_type="ada_norm_single", num_embeds_ada_norm=1000,
        )
        vae = tiny_vae()
        text_encoder = tiny_t5_encoder(T5_DIM)
    scheduler = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon",
                              clip_sample=False, set_alpha_to_one=False)
    frozen(transformer, vae, text_encoder)
    return pipelines[variant](tokenizer=tiny_t5_tokenizer(), text_encoder=text_encoder, vae=vae,
                              transformer=transformer, scheduler=scheduler)
