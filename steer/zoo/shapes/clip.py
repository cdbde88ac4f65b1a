"""The shapes CLIP: a small transformers ``CLIPModel`` trained contrastively on the shapes world
(Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"),
with hard negatives on the text side (relation-, colour-, shape- and count-corrupted captions).

Architecture (``clip_config``): vision ViT on 32x32 with 4x4 patches (64 tokens + class token),
text transformer over the offline 1000-token CLIP BPE (``steer.tokenizers``); both width 128,
4 layers, 4 heads, MLP 512; joint embedding 128. Preprocessing is in torch so gradients reach the
pixels: bilinear (anti-aliased) resize to 32x32 and per-channel normalisation with ``IMAGE_MEAN`` /
``IMAGE_STD``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from steer.zoo.quiet import quiet_loading

WEIGHTS_DIR = Path(__file__).parent / "weights" / "clip"
IMAGE_SIZE = 32
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


class ShapesClip(NamedTuple):
    """The loaded model (eval mode, gradients off) and its tokenizer."""

    model: "object"
    tokenizer: "object"


def clip_config(width: int = 128, layers: int = 4, heads: int = 4, image_size: int = IMAGE_SIZE,
                patch_size: int = 4, vocab_size: int = 1000):
    """The tiny ``CLIPConfig``. EOT (999) is the pad and eos token, so pooling takes the first EOT."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width,
                          num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                          bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                          projection_dim=width)
    vision = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=width,
                              intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads,
                              projection_dim=width)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=width)


def preprocess(images: Tensor, image_size: int = IMAGE_SIZE) -> Tensor:
    """Images (B, 3, H, W) in [0, 1] -> normalised pixel values (B, 3, S, S), differentiable."""
    if images.shape[-2:] != (image_size, image_size):
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True,
                               align_corners=False)
    mean = torch.tensor(IMAGE_MEAN, dtype=images.dtype, device=images.device).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, dtype=images.dtype, device=images.device).reshape(1, 3, 1, 1)
    return (images - mean) / std  # (B, 3, S, S)


def image_embeds(model, images: Tensor) -> Tensor:
    """Unit-norm image embeddings (B, D) of images (B, 3, H, W) in [0, 1]."""
    size = model.config.vision_config.image_size
    out = model.get_image_features(pixel_values=preprocess(images, size))
    feats = out if isinstance(out, Tensor) else out.pooler_output
    return F.normalize(feats, dim=-1)  # (B, D)


def text_embeds(model, tokenizer, texts: Sequence[str]) -> Tensor:
    """Unit-norm text embeddings (T, D)."""
    device = next(model.parameters()).device
    tok = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(device)
    out = model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
    feats = out if isinstance(out, Tensor) else out.pooler_output
    return F.normalize(feats, dim=-1)  # (T, D)


def save(model, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write the model (safetensors), tokenizer and an image-processor config to ``out_dir``."""
    from transformers import CLIPImageProcessor

    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    size = model.config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD)).save_pretrained(out)
    return out


def clip(path: Optional[str | os.PathLike] = None, device: str | torch.device = "cpu") -> ShapesClip:
    """Load the shipped shapes CLIP (or one saved at ``path``): model in eval mode, gradients off."""
    from transformers import CLIPModel, CLIPTokenizer

    where = Path(path) if path is not None else WEIGHTS_DIR
    if not (where / "model.safetensors").exists():
        raise FileNotFoundError(f"no shapes CLIP at {where}; train one with "
                                f"`python -m steer.zoo.shapes.train_clip --out {where}`")
    with quiet_loading():
        model = CLIPModel.from_pretrained(str(where), dtype=torch.float32)
    model = model.to(device).eval().requires_grad_(False)
    return ShapesClip(model, CLIPTokenizer.from_pretrained(str(where)))
