"""HPSv3 (Ma et al., 2025, "HPSv3: Towards Wide-Spectrum Human Preference Score", ICCV 2025,
arXiv:2508.03789; code github.com/MizzenAI/HPSv3, weights huggingface.co/MizzenAI/HPSv3).

Architecture (``hpsv3/model/qwen2vl_trainer.py::Qwen2VLRewardModelBT`` with ``config/HPSv3_7B.yaml``):
a Qwen2-VL-7B-Instruct backbone (vision tower + language model) whose tokenizer gains one special token
``<|Reward|>`` (embeddings resized to ``len(tokenizer)`` = 151,658) and a float32 "ranknet" head
``rm_head`` = Linear(3584, 1024) → ReLU → Dropout → Linear(1024, 16) → ReLU → Linear(16, 2) applied to
the language model's LAST hidden state (after the final RMSNorm) at the ``<|Reward|>`` position. The two
outputs are (μ, log σ) of a Gaussian preference score (the "uncertainty" loss uses σ = exp(out[1]));
the reference inferencer returns both and its authors "select miu as the final output": score = μ.
No typical range is stated; the authors' HPDv3 benchmark means are ~10.3–10.6 for the best models
(Kolors 10.55, Flux-dev 10.43, Playground-v2.5 10.27; project page).

Rebuilt here on transformers' ``Qwen2VLModel`` (``.visual`` + ``.language_model``) and ``Qwen2VLConfig``;
the language model is called on ``inputs_embeds`` with ``position_ids=None`` exactly as the original
does, so every token (image tokens included) gets the plain sequential position 0..L-1 on all three
M-RoPE axes (not Qwen2-VL's 2-D image positions) — that is how HPSv3 was trained and scores.

Checkpoint: ``HPSv3.safetensors`` (~16.6 GB: 8.29 B parameters, lm_head included), the state dict of
``Qwen2VLRewardModelBT`` in the pre-4.52 transformers layout (the project pinned 4.45): ``visual.*``,
``model.*`` (language model), ``lm_head.weight``, ``rm_head.{0,3,5}.*``.
Loaded strictly (the transformers >= 4.52 layout ``model.visual.*`` / ``model.language_model.*`` is
accepted too); ``lm_head.weight`` is not used by the score and is dropped. The tokenizer is
Qwen2-VL-7B-Instruct's (``tokenizer.json``), plus ``<|Reward|>`` added as the original does.

Prompt (``hpsv3/dataset/data_collator_qwen.py`` + Qwen2-VL's chat template, ``add_generation_prompt``):
system "You are a helpful assistant.", one user turn = the image, then ``INSTRUCTION`` with the caption
and ``"\\nPlease provide the overall ratings of this image: <|Reward|>\\n\\nEND\\n"``; right padding.

Preprocessing (``hpsv3/inference.py``: ``min_pixels = max_pixels = 256*28*28``): qwen-vl-utils'
``smart_resize`` to multiples of 28 with h*w ≈ 200,704 (448x448 for square images), PIL bicubic resize,
CLIP mean/std, patchify to (grid_h*grid_w, 3*2*14*14) with ``image_grid_thw`` = (1, grid_h, grid_w).
Here the same steps run in torch so gradients reach the pixels: antialiased bicubic in two passes
(horizontal first, clipped to [0, 1] after each, as PIL does in uint8), in float32. Deviation: no uint8
rounding of the input or between passes: within ~1 uint8 level (mean ~0.3) of ``Qwen2VLImageProcessorPil``
on PIL images, same ``image_grid_thw`` (tested). A caption holding ``<|Reward|>`` / ``<|image_pad|>`` is
refused (the original would mis-read it).
Defaults: dtype of the checkpoint (bf16) for the backbone, float32 for the head, like the original.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from steer.rewards.hpsv3_prompt import IMAGE_TOKEN, REWARD_TOKEN, chat_text
from steer.rewards.qwen2vl_vision import MERGE, PATCH, TEMPORAL, patchify, smart_resize, vision_input  # noqa: F401
from steer.rewards.torch_reward import TorchReward
from steer.rewards.weights import MissingWeightsError, WeightFile, load_state_dict, resolve_dir, resolve_file

WEIGHTS = WeightFile("HPSv3.safetensors", env="STEER_HPSV3_PATH", url="https://huggingface.co/MizzenAI/HPSv3",
                     repo_id="MizzenAI/HPSv3")
TOKENIZER = WeightFile("tokenizer.json", env="STEER_QWEN2VL_PATH",
                       url="https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct", repo_id="Qwen/Qwen2-VL-7B-Instruct",
                       option="tokenizer_path", is_dir=True)

PIXELS = 256 * 28 * 28  # HPSv3's min_pixels = max_pixels (200,704)

# Qwen2-VL-7B-Instruct's config.json, with the vocabulary resized to len(tokenizer) after <|Reward|>.
TEXT_CONFIG = dict(vocab_size=151658, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                   num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1000000.0,
                   max_position_embeddings=32768, max_window_layers=28, sliding_window=32768,
                   use_sliding_window=False, hidden_act="silu", bos_token_id=151643, eos_token_id=151645,
                   rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
VISION_CONFIG = dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, in_channels=3, hidden_size=3584,
                     patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL, hidden_act="quick_gelu")
CONFIG = dict(text_config=TEXT_CONFIG, vision_config=VISION_CONFIG, image_token_id=151655, video_token_id=151656,
              vision_start_token_id=151652, vision_end_token_id=151653)

# hpsv3/dataset/data_collator_qwen.py, verbatim line by line (trailing spaces included: they are tokenized).


# ----------------------------------------------------------------------------- model

def reward_head(hidden_size: int, out: int = 2) -> nn.Sequential:
    """HPSv3's "ranknet" head without ``rm_head_kwargs``: keys ``0``, ``3``, ``5`` (dropout is off at eval)."""
    return nn.Sequential(nn.Linear(hidden_size, 1024), nn.ReLU(), nn.Dropout(0.05), nn.Linear(1024, 16), nn.ReLU(),
                         nn.Linear(16, out))


def qwen2vl_config(config=None):
    """A ``Qwen2VLConfig`` from a dict or an instance; None: Qwen2-VL-7B-Instruct resized for ``<|Reward|>``."""
    from transformers import Qwen2VLConfig

    if config is None or isinstance(config, dict):
        return Qwen2VLConfig(**(config if config is not None else CONFIG))
    return config


class HPSv3Model(nn.Module):
    """Qwen2-VL (``Qwen2VLModel``) + ``rm_head``; ``forward`` returns (μ, log σ) per image, float32 (B, 2)."""

    def __init__(self, config=None):
        super().__init__()
        from transformers import Qwen2VLModel

        self.config = qwen2vl_config(config)
        self.backbone = Qwen2VLModel(self.config)
        self.rm_head = reward_head(self.config.text_config.hidden_size).float()

    def forward(self, pixel_values: Tensor, image_grid_thw: Tensor, input_ids: Tensor, attention_mask: Tensor,
                reward_token_id: int) -> Tensor:
        visual, lm = self.backbone.visual, self.backbone.language_model
        out = visual(pixel_values.to(visual.get_dtype()), grid_thw=image_grid_thw)
        image_embeds = out if isinstance(out, Tensor) else out.pooler_output  # (N, D) merged 2x2 patches
        embeds = lm.embed_tokens(input_ids)  # (B, L, D)
        is_image = (input_ids == self.config.image_token_id).unsqueeze(-1)  # (B, L, 1)
        if int(is_image.sum()) != image_embeds.shape[0]:
            raise ValueError(f"HPSv3: {int(is_image.sum())} {IMAGE_TOKEN} tokens for {image_embeds.shape[0]} image "
                             f"embeddings; remove {IMAGE_TOKEN} from captions")
        embeds = embeds.masked_scatter(is_image, image_embeds.to(embeds.dtype))  # (B, L, D)
        hidden = lm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).last_hidden_state  # (B, L, D)
        rows, cols = torch.nonzero(input_ids == reward_token_id, as_tuple=True)
        if rows.numel() != input_ids.shape[0] or not torch.equal(rows, torch.arange(len(rows), device=rows.device)):
            raise ValueError(f"HPSv3: each prompt must hold exactly one {REWARD_TOKEN} token; remove it from captions")
        return self.rm_head(hidden[rows, cols].float())  # (B, 2): mu, log sigma


def rename_key(key: str) -> Optional[str]:
    """Our name for an HPSv3 checkpoint key (the released 4.45 layout or the >= 4.52 one); None = unused."""
    for old, new in (("model.visual.", "backbone.visual."), ("model.language_model.", "backbone.language_model."),
                     ("visual.", "backbone.visual."), ("model.", "backbone.language_model.")):
        if key.startswith(old):
            return new + key[len(old):]
    return None if key == "lm_head.weight" else key


def build_from_state_dict(state: dict[str, Tensor], config=None, where: str = "checkpoint") -> HPSv3Model:
    """An ``HPSv3Model`` holding ``state`` (original key layout), built on the meta device and checked strictly."""
    renamed = {new: v for new, v in ((rename_key(k), v) for k, v in state.items()) if new is not None}
    with torch.device("meta"):
        model = HPSv3Model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected))
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {missing[0]!r})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})"] if unexpected else []
        raise ValueError(f"{where}: keys do not match HPSv3's layout: {', '.join(parts)}; use HPSv3.safetensors "
                         f"from {WEIGHTS.url} (or pass config= for a non-7B checkpoint)")
    for key, value in renamed.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{where}: {key} has shape {tuple(value.shape)}, the model expects "
                             f"{tuple(expected[key].shape)}; pass the config= this checkpoint was trained with")
    model.load_state_dict(renamed, strict=True, assign=True)
    _materialize_buffers(model)
    model.rm_head.float()
    return model


def _materialize_buffers(model: nn.Module) -> None:
    """Rebuild on CPU the modules whose (non-persistent, computed) buffers are still on meta: the RoPE tables."""
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            if not hasattr(module, "config"):
                raise RuntimeError(f"HPSv3: cannot rebuild buffers of {name} ({type(module).__name__})")
            model.set_submodule(name, type(module)(module.config))
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"HPSv3: {left[0]} was not loaded from the checkpoint")


def load_tokenizer(path_or_tokenizer):
    """Qwen2-VL's tokenizer (a directory or an instance) with ``<|Reward|>`` added, right padding."""
    tokenizer = path_or_tokenizer
    if isinstance(path_or_tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path_or_tokenizer))
    if REWARD_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "right"
    return tokenizer


class HPSv3Reward(TorchReward):
    """HPSv3: μ of the Qwen2-VL preference head at the ``<|Reward|>`` token (higher is better)."""

    name = "hpsv3"

    def __init__(self, model: HPSv3Model, tokenizer, min_pixels: int = PIXELS, max_pixels: int = PIXELS):
        super().__init__(model)
        self.tokenizer = load_tokenizer(tokenizer)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        vocab = self.tokenizer.get_vocab()
        self.reward_token_id = vocab[REWARD_TOKEN]
        rows = model.config.text_config.vocab_size
        if vocab.get(IMAGE_TOKEN) != model.config.image_token_id:
            raise ValueError(f"tokenizer's {IMAGE_TOKEN} id {vocab.get(IMAGE_TOKEN)} is not the model's image_token_id "
                             f"{model.config.image_token_id}; use Qwen2-VL-7B-Instruct's tokenizer ({TOKENIZER.url})")
        if len(self.tokenizer) > rows:
            raise ValueError(f"tokenizer has {len(self.tokenizer)} tokens but the checkpoint embeds {rows}; "
                             f"use Qwen2-VL-7B-Instruct's tokenizer ({TOKENIZER.url})")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, tokenizer=None, config=None,
                        dtype: Optional[torch.dtype] = None, **kw) -> "HPSv3Reward":
        """From ``HPSv3.safetensors`` (or a ``.pth`` of the same state dict, or a directory holding either).

        ``tokenizer``: Qwen2-VL's tokenizer or its directory (default: ``path``'s directory when it holds
        ``tokenizer.json``); ``config``: a ``Qwen2VLConfig`` (or dict) for non-7B checkpoints; ``dtype``:
        the backbone's dtype (default: the checkpoint's; the head stays float32)."""
        file = _checkpoint_file(Path(path))
        if tokenizer is None:
            if not (file.parent / TOKENIZER.filename).is_file():
                raise MissingWeightsError(f"no tokenizer next to {file}; pass tokenizer= or tokenizer_path= "
                                          f"(get it from {TOKENIZER.url})")
            tokenizer = file.parent
        state = load_state_dict(file)
        if isinstance(state.get("model"), dict):  # the original loader accepts {"model": state_dict}
            state = state["model"]
        model = build_from_state_dict(state, config, where=str(file))
        reward = cls(model, tokenizer, **kw)
        return reward.to(dtype=dtype) if dtype is not None else reward

    @classmethod
    def from_pretrained(cls, path: Optional[str] = None, tokenizer_path: Optional[str] = None,
                        dtype: Optional[torch.dtype] = None, **kw) -> "HPSv3Reward":
        """``HPSv3.safetensors`` from ``path`` / ``$STEER_HPSV3_PATH`` / the HF cache (MizzenAI/HPSv3); the
        tokenizer from ``tokenizer_path`` / ``$STEER_QWEN2VL_PATH`` / the HF cache (Qwen/Qwen2-VL-7B-Instruct)."""
        checkpoint = resolve_file(WEIGHTS, path)
        tokenizer_dir = resolve_dir(TOKENIZER, tokenizer_path)
        return cls.from_checkpoint(checkpoint, tokenizer=tokenizer_dir, dtype=dtype, **kw)

    def to(self, device=None, dtype=None) -> "HPSv3Reward":
        super().to(device=device, dtype=dtype)
        self.model.rm_head.float()  # the original keeps the head in float32 whatever the backbone dtype
        return self

    def encode(self, prompts: Sequence[str], n_image_tokens: int) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask (B, L), right-padded, of the scoring chat for each caption."""
        enc = self.tokenizer([chat_text(p, n_image_tokens) for p in prompts], padding=True, return_tensors="pt")
        return enc.input_ids.to(self.device), enc.attention_mask.to(self.device)

    def outputs(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """The head's raw outputs (B, 2): μ (the score) and log σ (its uncertainty), float32."""
        x = images.to(device=self.device, dtype=torch.float32)  # resize in float32 (no bf16 antialias kernel)
        pixel_values, grid = preprocess(x, self.min_pixels, self.max_pixels)  # (N, 1176), (B, 3)
        n_tokens = int(grid[0].prod()) // MERGE ** 2
        input_ids, mask = self.encode(prompts, n_tokens)  # (B, L)
        return self.model(pixel_values, grid, input_ids, mask, self.reward_token_id)  # (B, 2)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.outputs(images, prompts)[:, 0]  # (B,) mu


def _checkpoint_file(path: Path) -> Path:
    if path.is_dir():
        for name in (WEIGHTS.filename, "HPSv3_7B.pth", "final_model.pth"):
            if (path / name).is_file():
                return path / name
        raise MissingWeightsError(f"{path} holds no {WEIGHTS.filename}. " + WEIGHTS.hint())
    if not path.is_file():
        raise MissingWeightsError(f"{path} does not exist. " + WEIGHTS.hint())
    return path


def preprocess(images: Tensor, min_pixels: int = PIXELS, max_pixels: int = PIXELS) -> tuple[Tensor, Tensor]:
    """HPSv3's image input: :func:`qwen2vl_vision.vision_input` at its min = max pixels (256·28·28)."""
    return vision_input(images, min_pixels, max_pixels)
