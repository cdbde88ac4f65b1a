"""ImageReward (Xu et al., 2023, "ImageReward: Learning and Evaluating Human Preferences for
Text-to-Image Generation", NeurIPS 2023, arXiv:2304.05977).

Architecture (the reference ``ImageReward.score``): BLIP ViT-L/16 image encoder (224 px) -> its
token embeddings are the cross-attention memory of a BERT-base text encoder run on the prompt
(bert-base-uncased tokens with BLIP's added ``[DEC]``/``[ENC]``, padded/truncated to 35 tokens, the
first token is ``[CLS]``) -> the ``[CLS]`` hidden state -> MLP 768→1024→128→64→16→1 ->
``(x - 0.16717362830052426) / 1.0333394966054072``.
Rebuilt on transformers' ``BlipVisionModel`` / ``BlipTextModel`` (the ``image-reward`` package does
not run on transformers 5); ``ImageReward.pt`` keys are renamed by ``rename_key`` and loaded strictly.
Preprocessing: short side to 224 (bicubic, antialiased), center crop, CLIP mean/std, in torch.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from steer.rewards.mlp import RewardMLP
from steer.rewards.preprocess import clip_preprocess
from steer.rewards.torch_reward import TorchReward
from steer.rewards.weights import MissingWeightsError, WeightFile, load_state_dict, resolve_dir, resolve_file

MEAN = 0.16717362830052426
STD = 1.0333394966054072
MAX_TOKENS = 35
IMAGE_SIZE = 224

WEIGHTS = WeightFile("ImageReward.pt", env="STEER_IMAGE_REWARD_PATH", url="https://huggingface.co/THUDM/ImageReward",
                     repo_id="THUDM/ImageReward")
TOKENIZER = WeightFile("vocab.txt", env="STEER_BERT_TOKENIZER_PATH", url="https://huggingface.co/bert-base-uncased",
                       repo_id="bert-base-uncased", option="tokenizer_path", is_dir=True)

# BLIP ViT-L/16 (vit="large") and BLIP's med_config.json (BERT-base with cross-attention to 1024-d tokens).
VISION_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     image_size=IMAGE_SIZE, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu")
TEXT_CONFIG = dict(vocab_size=30524, hidden_size=768, encoder_hidden_size=1024, intermediate_size=3072,
                   num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512,
                   layer_norm_eps=1e-12, hidden_act="gelu", is_decoder=True, pad_token_id=0)

# Original ImageReward.pt name (regex) -> our name. BLIP's text encoder (med.py) already uses
# transformers' BERT names; its ViT uses timm names.
RENAMES = (
    (r"^blip\.visual_encoder\.cls_token$", "vision.embeddings.class_embedding"),
    (r"^blip\.visual_encoder\.pos_embed$", "vision.embeddings.position_embedding"),
    (r"^blip\.visual_encoder\.patch_embed\.proj\.", "vision.embeddings.patch_embedding."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.norm1\.", r"vision.encoder.layers.\1.layer_norm1."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.norm2\.", r"vision.encoder.layers.\1.layer_norm2."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.attn\.qkv\.", r"vision.encoder.layers.\1.self_attn.qkv."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vision.encoder.layers.\1.self_attn.projection."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.mlp\.", r"vision.encoder.layers.\1.mlp."),
    (r"^blip\.visual_encoder\.norm\.", "vision.post_layernorm."),
    (r"^blip\.text_encoder\.", "text."),
    (r"^mlp\.layers\.", "mlp.layers."),
)
# In ImageReward.pt but unused by the score: BLIP's contrastive projections and a position-id buffer.
UNUSED = (r"^blip\.vision_proj\.", r"^blip\.text_proj\.", r"^blip\.text_encoder\.embeddings\.position_ids$")


def rename_key(key: str) -> Optional[str]:
    """Our parameter name for an ``ImageReward.pt`` key; None for keys the score does not use."""
    if any(re.search(p, key) for p in UNUSED):
        return None
    for pattern, repl in RENAMES:
        if re.search(pattern, key):
            return re.sub(pattern, repl, key)
    raise KeyError(f"unexpected key {key!r} in the ImageReward checkpoint; is this ImageReward.pt?")


def convert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``ImageReward.pt`` state dict -> ``ImageRewardModel`` state dict."""
    renamed = {rename_key(k): v for k, v in state.items()}
    renamed.pop(None, None)
    return renamed


class ImageRewardModel(nn.Module):
    """BLIP vision tower + cross-attending BERT + the preference MLP."""

    def __init__(self, vision_config: Optional[dict] = None, text_config: Optional[dict] = None):
        super().__init__()
        from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        vcfg = BlipVisionConfig(**(vision_config or VISION_CONFIG))
        tcfg = BlipTextConfig(**(text_config or TEXT_CONFIG))
        if tcfg.encoder_hidden_size != vcfg.hidden_size or not tcfg.is_decoder:
            raise ValueError("text_config needs encoder_hidden_size == vision hidden_size and is_decoder=True "
                             "(the cross-attention layers)")
        self.vision = BlipVisionModel(vcfg)
        self.text = BlipTextModel(tcfg, add_pooling_layer=False)
        self.mlp = RewardMLP(tcfg.hidden_size)

    def forward(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state  # (B, 1+N, Dv)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)  # (B, 1+N)
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                           encoder_attention_mask=image_atts, is_decoder=False).last_hidden_state  # (B, L, Dt)
        raw = self.mlp(hidden[:, 0, :]).float().squeeze(-1)  # (B,) from the [CLS] state
        return (raw - MEAN) / STD  # (B,)


def blip_tokenizer(path: str | os.PathLike):
    """bert-base-uncased from a directory (``vocab.txt``) with BLIP's ``[DEC]`` bos and ``[ENC]`` tokens."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(path))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageReward(TorchReward):
    """ImageReward v1.0, normalized score (≈ N(0, 1) over the authors' validation set)."""

    name = "image_reward"

    def __init__(self, model: ImageRewardModel, tokenizer):
        super().__init__(model)
        self.tokenizer = tokenizer
        if len(tokenizer) > model.text.config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the text encoder only "
                             f"{model.text.config.vocab_size}; use BLIP's bert-base-uncased tokenizer")

    @classmethod
    def from_model(cls, model: ImageRewardModel, tokenizer) -> "ImageReward":
        return cls(model, tokenizer)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, tokenizer, vision_config: Optional[dict] = None,
                        text_config: Optional[dict] = None) -> "ImageReward":
        """From an ``ImageReward.pt``-layout checkpoint, renamed and loaded strictly."""
        model = ImageRewardModel(vision_config, text_config)
        model.load_state_dict(convert_state_dict(load_state_dict(path)), strict=True)
        return cls(model, tokenizer)

    @classmethod
    def from_pretrained(cls, path: Optional[str] = None, tokenizer_path: Optional[str] = None) -> "ImageReward":
        """``ImageReward.pt`` from ``path`` / ``$STEER_IMAGE_REWARD_PATH`` / the HF cache; the BERT
        tokenizer from ``tokenizer_path`` / ``$STEER_BERT_TOKENIZER_PATH`` / the HF cache."""
        checkpoint = resolve_file(WEIGHTS, path)
        try:
            tokenizer = blip_tokenizer(resolve_dir(TOKENIZER, tokenizer_path))
        except OSError as err:
            raise MissingWeightsError(TOKENIZER.hint()) from err
        return cls.from_checkpoint(checkpoint, tokenizer)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        size = self.model.vision.config.image_size
        pixels = clip_preprocess(self._pixels(images), size)  # (B, 3, 224, 224)
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_TOKENS,
                             return_tensors="pt")
        return self.model(pixels, enc.input_ids.to(self.device), enc.attention_mask.to(self.device))  # (B,)
