"""CLIP score (Hessel et al., 2021, "CLIPScore: A Reference-free Evaluation Metric for Image
Captioning", arXiv:2104.08718) as a reward: ``100 * cosine(image, text)``.

Deviation from CLIPScore: no ``max(·, 0)`` clamp and no 2.5 weight, so the reward keeps its gradient
and sign (the common "CLIP score" of text-to-image papers). Any open_clip or transformers CLIP model
works; the default is OpenAI CLIP ViT-L/14 (transformers ``openai/clip-vit-large-patch14``), preprocessed as
its ``CLIPImageProcessor`` does (short side 224, PIL bicubic, floored center crop; as torchmetrics'
CLIPScore, which calls that processor).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from steer.rewards.encoders import ClipEncoderReward, cosine
from steer.rewards.preprocess import processor_preprocess
from steer.rewards.weights import WeightFile

WEIGHTS = WeightFile("config.json", env="STEER_CLIP_PATH", url="https://huggingface.co/openai/clip-vit-large-patch14",
                     repo_id="openai/clip-vit-large-patch14", is_dir=True)
SCALE = 100.0


class CLIPReward(ClipEncoderReward):
    """``100 * cosine`` between CLIP image and text embeddings."""

    name = "clip"
    preprocess = staticmethod(processor_preprocess)
    weights = WEIGHTS  # ``from_pretrained(path)``: a directory, ``$STEER_CLIP_PATH`` or the HF cache

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return SCALE * cosine(self.encoder.encode_image(images), self.encoder.encode_text(prompts))  # (B,)
