"""PickScore (Kirstain et al., 2023, "Pick-a-Pic: An Open Dataset of User Preferences for
Text-to-Image Generation", arXiv:2305.01569).

Architecture: transformers ``CLIPModel`` (``yuvalkirstain/PickScore_v1``, a fine-tuned CLIP-H/14),
with the ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` processor settings (a ``CLIPImageProcessor``): short
side to 224 (PIL bicubic), center crop 224 with the offset floored, CLIP mean/std — done in torch here
(``preprocess.processor_preprocess``; tested against the processor itself).
Score = ``logit_scale.exp() * cosine`` (the reference's ``logits_per_image``; typical values ~18–23). The tokenizer is the repo's if present,
else the same OpenAI/LAION BPE rebuilt offline from open_clip's vocabulary.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from steer.rewards.encoders import ClipEncoderReward, cosine
from steer.rewards.preprocess import processor_preprocess
from steer.rewards.weights import WeightFile

WEIGHTS = WeightFile("config.json", env="STEER_PICKSCORE_PATH", url="https://huggingface.co/yuvalkirstain/PickScore_v1",
                     repo_id="yuvalkirstain/PickScore_v1", is_dir=True)


class PickScoreReward(ClipEncoderReward):
    """``logit_scale.exp() * cosine(image, text)`` with the PickScore CLIP."""

    name = "pickscore"
    preprocess = staticmethod(processor_preprocess)
    weights = WEIGHTS  # ``from_pretrained(path)``: a directory, ``$STEER_PICKSCORE_PATH`` or the HF cache

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        cos = cosine(self.encoder.encode_image(images), self.encoder.encode_text(prompts))  # (B,)
        return self.encoder.logit_scale.exp() * cos  # (B,)
