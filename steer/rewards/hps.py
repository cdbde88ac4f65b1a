"""HPS — Human Preference Score v2 / v2.1 (Wu et al., 2023, "Human Preference Score v2: A Solid
Benchmark for Evaluating Human Preferences of Text-to-Image Synthesis", arXiv:2306.09341).

Architecture: open_clip ``ViT-H-14`` created with ``pretrained=None``, then the HPS checkpoint
(``HPS_v2.1_compressed.pt`` by default, ``HPS_v2_compressed.pt`` for v2.0; the weights sit under the
``state_dict`` key) loaded strictly. Score = cosine(image features, text features), i.e. the
reference's ``logits_per_image`` diagonal *without* any temperature: typical values are ~0.2–0.35.
(Papers often report it ×100; multiply by 100 yourself if you want that scale, or weight it in a spec.)
Preprocessing as the original's evaluation transform (``light_augmentation=True``: ``ToTensor`` then
``ResizeMaxSize(224)``): long side to 224 (antialiased bicubic), zero-pad to 224 x 224, CLIP mean/std —
in torch (``preprocess.hps_preprocess``; non-square images are letterboxed, not cropped).
We do not depend on the ``hpsv2`` package (its wheel lacks its vocab/configs and pins pytest).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from torch import Tensor

from steer.rewards.encoders import ClipEncoderReward, cosine, open_clip_from_checkpoint, open_clip_tokenizer
from steer.rewards.preprocess import hps_preprocess
from steer.rewards.weights import WeightFile, resolve_file

HPS_URL = "https://huggingface.co/xswu/HPSv2"
WEIGHTS = {
    "v2.1": WeightFile("HPS_v2.1_compressed.pt", env="STEER_HPS_PATH", url=HPS_URL, repo_id="xswu/HPSv2"),
    "v2.0": WeightFile("HPS_v2_compressed.pt", env="STEER_HPS_PATH", url=HPS_URL, repo_id="xswu/HPSv2"),
}
MODEL_NAME = "ViT-H-14"


class HPSReward(ClipEncoderReward):
    """HPSv2.x: cosine of the HPS-tuned open_clip image and text embeddings (range [-1, 1])."""

    name = "hps"
    preprocess = staticmethod(hps_preprocess)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, model_name: str = MODEL_NAME, tokenizer=None) -> "HPSReward":
        """From an HPS checkpoint file (``{"state_dict": ...}``) on an open_clip config ``model_name``."""
        model = open_clip_from_checkpoint(model_name, path, key="state_dict")
        return cls.from_model(model, tokenizer if tokenizer is not None else open_clip_tokenizer(model_name))

    @classmethod
    def from_pretrained(cls, version: str = "v2.1", path: Optional[str] = None,
                        model_name: str = MODEL_NAME) -> "HPSReward":
        """HPSv2.1 (default) or v2.0 from ``path``, ``$STEER_HPS_PATH`` or the Hugging Face cache.
        ``model_name``: the open_clip config the checkpoint fits (``ViT-H-14`` for the released ones)."""
        if version not in WEIGHTS:
            raise ValueError(f"unknown HPS version {version!r}; choose from {sorted(WEIGHTS)}")
        return cls.from_checkpoint(resolve_file(WEIGHTS[version], path), model_name=model_name)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        image_features = self.encoder.encode_image(images)  # (B, D)
        text_features = self.encoder.encode_text(prompts)  # (B, D)
        return cosine(image_features, text_features)  # (B,)
