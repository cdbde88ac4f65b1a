"""Tiny random-init rewards on the real architectures, for tests and benchmarks (offline, CPU).

Every builder uses the same classes as the full-size reward (open_clip ``CLIP``, transformers
``CLIPModel`` / ``BlipVisionModel`` / ``BlipTextModel``) at toy widths, and the checkpoint writers
produce the ORIGINAL key layouts (HPS ``{"state_dict": open_clip keys}``, ``ImageReward.pt``'s
``blip.visual_encoder.*`` / ``blip.text_encoder.*`` / ``mlp.layers.*``, LAION ``layers.*``), so that
loading goes through the real loaders with strict key checking.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch

TINY_OPEN_CLIP = "steer-tiny-ViT"
# open_clip ViT-H-14's layout at toy width; the full 49,408-token vocabulary so open_clip's own
# tokenizer works; 224-px input so the real preprocessing runs.
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_BLIP_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                        image_size=224, patch_size=32, layer_norm_eps=1e-6, hidden_act="gelu")
BERT_WORDS = ("a an the of on in above below photo picture red blue green yellow circle square triangle "
              "cat dog bird small large two three and with ##s ##ed").split()
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _cache_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"steer-tiny-rewards-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def register_tiny_open_clip() -> str:
    """Register ``TINY_OPEN_CLIP`` with open_clip (``add_model_config``); returns the name."""
    import open_clip

    if TINY_OPEN_CLIP not in open_clip.list_models():
        path = _cache_dir() / f"{TINY_OPEN_CLIP}.json"
        path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
        open_clip.add_model_config(path)
    return TINY_OPEN_CLIP


def tiny_open_clip(seed: int = 0):
    """(open_clip ``CLIP`` at toy size, open_clip's tokenizer), eval mode, frozen."""
    import open_clip

    name = register_tiny_open_clip()
    torch.manual_seed(seed)
    from steer.rewards.encoders import _quiet_open_clip

    with _quiet_open_clip():  # a random-init model on purpose
        model = open_clip.create_model(name, pretrained=None).eval().requires_grad_(False)
    return model, open_clip.get_tokenizer(name)


def tiny_clip_tokenizer():
    """A genuine 1000-token CLIP BPE tokenizer (transformers), built offline."""
    from steer.zoo.tokenizers import clip_tokenizer

    return clip_tokenizer(_cache_dir() / "clip_tokenizer_1000")


def tiny_transformers_clip(seed: int = 0, logit_scale: float = 2.5):
    """(transformers ``CLIPModel`` at toy size, 1000-token CLIP tokenizer)."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=998, eos_token_id=999, pad_token_id=999)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  image_size=224, patch_size=32)
    torch.manual_seed(seed)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32, logit_scale_init_value=logit_scale)
    return CLIPModel(config).eval().requires_grad_(False), tiny_clip_tokenizer()


def write_bert_vocab(out_dir: str | os.PathLike) -> Path:
    """A tiny uncased BERT ``vocab.txt`` (specials + a few words + a–z) for ``blip_tokenizer``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = [w for w in BERT_WORDS if w not in letters]
    tokens = BERT_SPECIALS + letters + ["##" + c for c in letters] + words
    (out / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return out


def tiny_bert_tokenizer():
    from steer.rewards.image_reward import blip_tokenizer

    return blip_tokenizer(write_bert_vocab(_cache_dir() / "bert_vocab"))


def tiny_blip_text_config(tokenizer) -> dict:
    return dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id, hidden_size=32, encoder_hidden_size=TINY_BLIP_VISION["hidden_size"],
                intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=40,
                layer_norm_eps=1e-12, hidden_act="gelu", is_decoder=True, pad_token_id=0)


def imagereward_original_state_dict(vision: dict, text: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tensors under ``ImageReward.pt``'s own names and shapes (BLIP timm-ViT + med.py BERT + MLP)."""
    D, I, p = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    n_tokens = (vision["image_size"] // p) ** 2 + 1
    H, E, F, V, P = (text[k] for k in ("hidden_size", "encoder_hidden_size", "intermediate_size", "vocab_size",
                                       "max_position_embeddings"))
    shapes = {"blip.visual_encoder.cls_token": (1, 1, D), "blip.visual_encoder.pos_embed": (1, n_tokens, D),
              "blip.visual_encoder.patch_embed.proj.weight": (D, 3, p, p), "blip.visual_encoder.patch_embed.proj.bias": (D,),
              "blip.visual_encoder.norm.weight": (D,), "blip.visual_encoder.norm.bias": (D,)}
    for i in range(vision["num_hidden_layers"]):
        b = f"blip.visual_encoder.blocks.{i}."
        shapes.update({b + "norm1.weight": (D,), b + "norm1.bias": (D,), b + "attn.qkv.weight": (3 * D, D),
                       b + "attn.qkv.bias": (3 * D,), b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
                       b + "norm2.weight": (D,), b + "norm2.bias": (D,), b + "mlp.fc1.weight": (I, D),
                       b + "mlp.fc1.bias": (I,), b + "mlp.fc2.weight": (D, I), b + "mlp.fc2.bias": (D,)})
    t = "blip.text_encoder."
    shapes.update({t + "embeddings.word_embeddings.weight": (V, H), t + "embeddings.position_embeddings.weight": (P, H),
                   t + "embeddings.LayerNorm.weight": (H,), t + "embeddings.LayerNorm.bias": (H,)})
    for i in range(text["num_hidden_layers"]):
        b = f"{t}encoder.layer.{i}."
        for att, kv_in in (("attention", H), ("crossattention", E)):
            shapes.update({f"{b}{att}.self.query.weight": (H, H), f"{b}{att}.self.query.bias": (H,),
                           f"{b}{att}.self.key.weight": (H, kv_in), f"{b}{att}.self.key.bias": (H,),
                           f"{b}{att}.self.value.weight": (H, kv_in), f"{b}{att}.self.value.bias": (H,),
                           f"{b}{att}.output.dense.weight": (H, H), f"{b}{att}.output.dense.bias": (H,),
                           f"{b}{att}.output.LayerNorm.weight": (H,), f"{b}{att}.output.LayerNorm.bias": (H,)})
        shapes.update({b + "intermediate.dense.weight": (F, H), b + "intermediate.dense.bias": (F,),
                       b + "output.dense.weight": (H, F), b + "output.dense.bias": (H,),
                       b + "output.LayerNorm.weight": (H,), b + "output.LayerNorm.bias": (H,)})
    dims = (H, 1024, 128, 64, 16, 1)
    for idx, (n_in, n_out) in zip((0, 2, 4, 6, 7), zip(dims[:-1], dims[1:])):
        shapes.update({f"mlp.layers.{idx}.weight": (n_out, n_in), f"mlp.layers.{idx}.bias": (n_out,)})
    # BLIP's unused contrastive projections (present in ImageReward.pt; embed_dim 256)
    shapes.update({"blip.vision_proj.weight": (256, D), "blip.vision_proj.bias": (256,),
                   "blip.text_proj.weight": (256, H), "blip.text_proj.bias": (256,)})
    state = {k: torch.randn(s, generator=generator) * 0.05 for k, s in shapes.items()}
    for k in state:  # LayerNorm weights near 1, as trained
        if ("norm" in k or "LayerNorm" in k) and k.endswith("weight"):
            state[k] = 1.0 + state[k]
    state[t + "embeddings.position_ids"] = torch.arange(P).unsqueeze(0)
    return state


def write_tiny_image_reward(path: str | os.PathLike, seed: int = 0) -> tuple[Path, dict, dict]:
    """Write a tiny ``ImageReward.pt`` (original keys); returns (path, vision_config, text_config)."""
    text = tiny_blip_text_config(tiny_bert_tokenizer())
    state = imagereward_original_state_dict(TINY_BLIP_VISION, text, torch.Generator().manual_seed(seed))
    torch.save(state, str(path))
    return Path(path), dict(TINY_BLIP_VISION), text


def write_tiny_hps(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny HPS checkpoint ``{"state_dict": open_clip keys}`` for ``TINY_OPEN_CLIP``."""
    model, _ = tiny_open_clip(seed)
    torch.save({"state_dict": model.state_dict()}, str(path))
    return Path(path)


def write_tiny_aesthetic(path: str | os.PathLike, version: str = "v2", input_size: int = 32, seed: int = 0) -> Path:
    """Write a LAION-layout head checkpoint (``layers.{0,2,4,6,7}.*`` for v2, ``weight``/``bias`` for v1)."""
    g = torch.Generator().manual_seed(seed)
    if version == "v1":
        state = {"weight": torch.randn(1, input_size, generator=g), "bias": torch.randn(1, generator=g)}
    else:
        dims = (input_size, 1024, 128, 64, 16, 1)
        state = {}
        for idx, (n_in, n_out) in zip((0, 2, 4, 6, 7), zip(dims[:-1], dims[1:])):
            state[f"layers.{idx}.weight"] = torch.randn(n_out, n_in, generator=g) / n_in ** 0.5
            state[f"layers.{idx}.bias"] = torch.randn(n_out, generator=g) * 0.1
    torch.save(state, str(path))
    return Path(path)


def tiny_rewards(workdir: Optional[str | os.PathLike] = None) -> dict:
    """Every reward at toy size, loaded through its real loader: name -> Reward."""
    from steer.rewards.aesthetic import AestheticReward
    from steer.rewards.clip import CLIPReward
    from steer.rewards.hps import HPSReward
    from steer.rewards.image_reward import ImageReward
    from steer.rewards.jpeg import JpegCompressibility
    from steer.rewards.pickscore import PickScoreReward

    work = Path(workdir) if workdir else _cache_dir()
    ir_path, vision, text = write_tiny_image_reward(work / "ImageReward.pt")
    hf_clip, hf_tok = tiny_transformers_clip()
    return {
        "hps": HPSReward.from_checkpoint(write_tiny_hps(work / "HPS_v2.1_compressed.pt"), model_name=TINY_OPEN_CLIP),
        "pickscore": PickScoreReward.from_model(*tiny_transformers_clip(seed=1)),
        "image_reward": ImageReward.from_checkpoint(ir_path, tiny_bert_tokenizer(), vision, text),
        "clip": CLIPReward.from_model(hf_clip, hf_tok),
        "aesthetic": AestheticReward.from_checkpoint(write_tiny_aesthetic(work / "aesthetic_v2.pth"), hf_clip, "v2"),
        "aesthetic_v1": AestheticReward.from_checkpoint(write_tiny_aesthetic(work / "aesthetic_v1.pth", "v1"),
                                                        hf_clip, "v1"),
        "jpeg": JpegCompressibility(),
    }
