"""CLIP score (Hessel et al., 2021, "CLIPScore: A Reference-free Evaluation Metric for Image
Captioning", arXiv:2104.08718) as a reward: ``100 * cosine(image, text)``.

Deviation from CLIPScore: no ``max(·, 0)`` clamp and no 2.5 weight, so the reward keeps its gradient
and sign (the common "CLIP score" of text-to-image papers). Any open_clip or transformers CLIP model
works; the default is OpenAI CLIP ViT-L/14 (transformers ``openai/clip-vit-large-patch14``).
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

from steer.rewards.encoders import ClipEncoderReward, cosine, transformers_clip
from steer.rewards.weights import MissingWeightsError, WeightFile, resolve_dir

WEIGHTS = WeightFile("config.json", env="STEER_CLIP_PATH", url="https://huggingface.co/openai/clip-vit-large-patch14",
                     repo_id="openai/clip-vit-large-patch14", is_dir=True)
SCALE = 100.0


class CLIPReward(ClipEncoderReward):
    """``100 * cosine`` between CLIP image and text embeddings."""

    name = "clip"

    @classmethod
    def from_pretrained(cls, path: Optional[str] = None) -> "CLIPReward":
        """A transformers CLIP directory from ``path``, ``$STEER_CLIP_PATH`` or the Hugging Face cache."""
        return cls.from_model(*load_clip_dir(WEIGHTS, path))

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return SCALE * cosine(self.encoder.encode_image(images), self.encoder.encode_text(prompts))  # (B,)


def load_clip_dir(wf: WeightFile, path: Optional[str] = None):
    """(model, tokenizer) of a transformers CLIP directory, with a one-line error if its weights are absent."""
    directory = resolve_dir(wf, path)
    try:
        return transformers_clip(directory)
    except OSError as err:  # config present but weights missing from the cache / directory
        raise MissingWeightsError(f"model weights missing in {directory}. " + wf.hint()) from err
