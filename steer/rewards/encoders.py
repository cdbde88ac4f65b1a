"""One interface over the image and text towers of an open_clip ``CLIP`` or a transformers ``CLIPModel``.

``ClipEncoder.encode_image(images in [0,1])`` preprocesses in torch (``preprocess.clip_preprocess``),
so gradients reach the pixels; ``encode_text(prompts)`` tokenizes with either an open_clip tokenizer
(a callable returning ids) or a transformers tokenizer. Both return unnormalized projected features
(B, D) in float32.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from steer.rewards.torch_reward import TorchReward
from steer.rewards.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess
from steer.rewards.weights import MissingWeightsError, WeightFile, load_state_dict, resolve_dir


def is_transformers_clip(model: nn.Module) -> bool:
    return hasattr(model, "get_image_features") and hasattr(model, "config")


def is_open_clip(model: nn.Module) -> bool:
    return hasattr(model, "encode_image") and hasattr(model, "encode_text")


class ClipEncoder(nn.Module):
    """Image/text features of a CLIP model from either library; the tokenizer rides along."""

    def __init__(self, model: nn.Module, tokenizer=None, mean=CLIP_MEAN, std=CLIP_STD,
                 preprocess: Callable[..., Tensor] = clip_preprocess):
        super().__init__()
        self.preprocess = preprocess  # (images, size, mean, std) -> model input: the original's transform
        if not (is_transformers_clip(model) or is_open_clip(model)):
            raise TypeError(f"expected an open_clip CLIP or a transformers CLIPModel, got {type(model).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = _image_size(model)

    @property
    def logit_scale(self) -> Tensor:
        """The learned log temperature (scalar); ``logit_scale.exp()`` multiplies cosines."""
        return self.model.logit_scale.float()

    def encode_image(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> features (B, D) float32."""
        param = next(self.model.parameters())
        pixels = self.preprocess(images.to(param.device, param.dtype), self.image_size, self.mean, self.std)
        if is_transformers_clip(self.model):
            return _pooled(self.model.get_image_features(pixel_values=pixels)).float()  # (B, D)
        return self.model.encode_image(pixels).float()  # (B, D)

    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """B prompts -> features (B, D) float32."""
        if self.tokenizer is None:
            raise ValueError("this CLIP encoder has no tokenizer; pass tokenizer= when building the reward")
        device = next(self.model.parameters()).device
        if is_transformers_clip(self.model):
            ids, mask = _hf_tokens(self.tokenizer, prompts, self.model.config.text_config.max_position_embeddings)
            out = self.model.get_text_features(input_ids=ids.to(device), attention_mask=mask.to(device))
            return _pooled(out).float()  # (B, D)
        return self.model.encode_text(_open_clip_tokens(self.tokenizer, prompts, self.model).to(device)).float()


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity of (B, D) features -> (B,)."""
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


def _pooled(out) -> Tensor:
    """transformers 5 returns an output object whose ``pooler_output`` is the projection; 4.x a tensor."""
    return out if isinstance(out, Tensor) else out.pooler_output


def _image_size(model: nn.Module) -> int:
    if is_transformers_clip(model):
        size = model.config.vision_config.image_size
    else:
        size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return int(size)


def _is_hf_tokenizer(tokenizer) -> bool:
    return hasattr(tokenizer, "pad_token_id") and hasattr(tokenizer, "model_max_length")


def _hf_tokens(tokenizer, prompts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
    max_length = min(max_length, tokenizer.model_max_length)
    enc = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask  # (B, L), (B, L)


def _open_clip_tokens(tokenizer, prompts: Sequence[str], model: nn.Module) -> Tensor:
    """Token ids as open_clip lays them out: SOT, tokens, EOT, zeros to the context length."""
    if not _is_hf_tokenizer(tokenizer):
        return tokenizer(list(prompts))  # open_clip tokenizer: (B, context_length)
    ids, mask = _hf_tokens(tokenizer, prompts, model.context_length)
    return ids.masked_fill(mask == 0, 0)  # (B, L)


def open_clip_from_checkpoint(model_name: str, path: str | os.PathLike, key: Optional[str] = None) -> nn.Module:
    """``open_clip.create_model(model_name, pretrained=None)`` then the checkpoint, strictly."""
    import open_clip

    if model_name not in open_clip.list_models():
        raise ValueError(f"open_clip has no model config {model_name!r}; register it with open_clip.add_model_config")
    with _quiet_open_clip():  # it warns "no pretrained weights loaded": we load them just below
        model = open_clip.create_model(model_name, pretrained=None)
    model.load_state_dict(load_state_dict(path, key=key), strict=True)
    return model.eval().requires_grad_(False)


@contextlib.contextmanager
def _quiet_open_clip():
    class _Drop(logging.Filter):
        def filter(self, record):
            return "No pretrained weights loaded" not in record.getMessage()

    root, drop = logging.getLogger(), _Drop()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def open_clip_tokenizer(model_name: str):
    """open_clip's own tokenizer for ``model_name`` (its BPE vocabulary ships in the package; offline)."""
    import open_clip

    return open_clip.get_tokenizer(model_name)


def full_clip_tokenizer():
    """A transformers ``CLIPTokenizer`` with the full 49,408-token OpenAI/LAION BPE, built offline
    from the vocabulary open_clip ships (the same ids as the hub's CLIP tokenizers)."""
    from steer.tokenizers import clip_tokenizer

    cache = os.environ.get("STEER_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "steer"))
    return clip_tokenizer(os.path.join(cache, "clip_tokenizer_full"), num_merges=None)


def transformers_clip(path: str, tokenizer=None):
    """A transformers ``CLIPModel`` from a local directory, and its tokenizer (the directory's, or
    ``full_clip_tokenizer()`` when it has none)."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
    if tokenizer is None:
        has_tok = os.path.isfile(os.path.join(path, "vocab.json")) or os.path.isfile(os.path.join(path, "tokenizer.json"))
        tokenizer = CLIPTokenizer.from_pretrained(path) if has_tok else full_clip_tokenizer()
    return model, tokenizer


class ClipEncoderReward(TorchReward):
    """A reward computed from one ``ClipEncoder`` (CLIP score, PickScore, HPS): holds it and builds
    it from an in-memory CLIP and tokenizer; subclasses define ``name``, ``score`` and the loaders."""

    weights: Optional["WeightFile"] = None  # a transformers CLIP directory, for ``from_pretrained``
    # the original's image transform, (images, size, mean, std) -> model input (``steer.rewards.preprocess``)
    preprocess: Callable[..., Tensor] = staticmethod(clip_preprocess)

    def __init__(self, encoder: ClipEncoder):
        super().__init__(encoder)
        self.encoder = encoder

    @classmethod
    def from_pretrained(cls, path: Optional[str] = None):
        """The transformers CLIP directory ``path``, else the one ``cls.weights`` names (its environment
        variable or the Hugging Face cache); a one-line error says where to get it when absent."""
        return cls.from_model(*load_clip_dir(cls.weights, path))

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer):
        """From an in-memory open_clip ``CLIP`` or transformers ``CLIPModel`` (its weights already
        loaded) and its tokenizer."""
        return cls(ClipEncoder(model, tokenizer, preprocess=cls.preprocess))


def load_clip_dir(wf: WeightFile, path: Optional[str] = None):
    """(model, tokenizer) of a transformers CLIP directory, with a one-line error if its weights are absent."""
    directory = resolve_dir(wf, path)
    try:
        return transformers_clip(directory)
    except OSError as err:  # config present but weights missing from the cache / directory
        raise MissingWeightsError(f"model weights missing in {directory}. " + wf.hint()) from err
