"""Helpers shared by the tiny fixtures: a seeded scope and eval-mode freezing."""
from __future__ import annotations

import contextlib
import tempfile

import torch

TINY_CLIP_VOCAB = 1000  # 486 merges -> SOT 998, EOT 999 (see steer.zoo.tokenizers)


@contextlib.contextmanager
def seeded(seed: int):
    """Deterministic weight init without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def frozen(*modules):
    """``.eval().requires_grad_(False)`` on every module (fresh modules start in training mode)."""
    for m in modules:
        if m is not None:
            m.eval().requires_grad_(False)
    return modules


def tiny_clip_tokenizer():
    """The offline 1000-token CLIP tokenizer, built in a temporary directory (loaded into memory)."""
    from steer.zoo.tokenizers import clip_tokenizer

    with tempfile.TemporaryDirectory(prefix="steer-clip-tok-") as d:
        return clip_tokenizer(d)


def tiny_clip_text_config(hidden_size: int = 32, projection_dim: int = 32):
    """A 2-layer CLIP text config matching the tiny tokenizer's vocabulary and special ids."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=TINY_CLIP_VOCAB, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        bos_token_id=998, eos_token_id=999, pad_token_id=999, projection_dim=projection_dim,
    )


def tiny_vae(scaling_factor: float = 0.18215, **extra):
    """AutoencoderKL with 3 resolutions (downsampling factor 4): 32x32 images <-> 4x8x8 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8,
        scaling_factor=scaling_factor, **extra,
    )
