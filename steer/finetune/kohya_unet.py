"""The SD / SDXL UNet names of the kohya layout (see ``steer.finetune.lora_export``).

**SD 1.x / 2.x** (``UNet2DConditionModel``): kohya's sd-scripts trains SD 1.x/2.x on the diffusers
  UNet, so its LoRAs name the diffusers module path (``lora_unet_down_blocks_1_attentions_0_transformer_
  blocks_0_attn1_to_q``); that is the layout diffusers' ``load_lora_weights`` reads for these pipelines
  (it maps LDM names only for SDXL), and ComfyUI and A1111 read it too (they map diffusers UNet names
  to their own). Export writes it.
**SDXL**: kohya trains SDXL on the SGM UNet, so SDXL LoRAs use the original LDM / SGM names, which
  ComfyUI's model keys and A1111 use and which diffusers maps back with the UNet config
  (``_maybe_map_sgm_blocks_to_diffusers``). With L = ``layers_per_block`` (2 in SDXL and every
  released SD 1.x / 2.x), diffusers -> LDM is::

      conv_in                            -> input_blocks.0.0
      down_blocks.i.resnets.j            -> input_blocks.(1 + i(L+1) + j).0
      down_blocks.i.attentions.j         -> input_blocks.(1 + i(L+1) + j).1
      down_blocks.i.downsamplers.0.conv  -> input_blocks.((i+1)(L+1)).0.op
      mid_block.resnets.0 / attentions.0 / resnets.1 -> middle_block.0 / .1 / .2
      up_blocks.i.resnets.j              -> output_blocks.(i(L+1) + j).0
      up_blocks.i.attentions.j           -> output_blocks.(i(L+1) + j).1
      up_blocks.i.upsamplers.0.conv      -> output_blocks.(i(L+1) + L).(2 if the block has attention else 1).conv
      conv_out -> out.2;  time_embedding.linear_1/2 -> time_embed.0/2;  add_embedding.linear_1/2 -> label_emb.0.0/0.2
      inside a resnet: conv1 -> in_layers.2, conv2 -> out_layers.3, time_emb_proj -> emb_layers.1,
                       conv_shortcut -> skip_connection
      inside an attention block (proj_in, proj_out, transformer_blocks.k.attn1.to_q, ff.net.2 ...): unchanged

  so ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`` (L = 2) is
  ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``.

"""
from __future__ import annotations

import re
from typing import Dict, Tuple

import torch

from steer.errors import SteerError

SUPPORTED = "SD 1.x/2.x (sd), SDXL (sdxl), FLUX.1 (flux)"
Modules = Dict[str, Tuple[torch.Tensor, torch.Tensor]]  # diffusers module path -> (A, B)
Alphas = Dict[str, float]

_RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
           "conv_shortcut": "skip_connection"}
_UNET_TOP = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2"}


def _up_has_attention(family: str, i: int) -> bool:
    """Released layouts: SD 1.x/2.x up_blocks 1-3 have cross-attention, SDXL up_blocks 0-1."""
    return i >= 1 if family == "sd" else i <= 1


def _inner_to_ldm(kind: str, rest: str, name: str) -> str:
    if kind == "resnets":
        head, _, tail = rest.partition(".")
        if head not in _RESNET or tail:
            raise SteerError(f"LoRA module {name!r} has no LDM name; target attention / resnet layers")
        return _RESNET[head]
    return rest


def unet_to_ldm(name: str, family: str, layers_per_block: int = 2) -> str:
    """A diffusers UNet2DConditionModel module path -> its LDM / SGM path (see the module docstring)."""
    L = layers_per_block
    if name in _UNET_TOP:
        return _UNET_TOP[name]
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks.{1 + i * (L + 1) + j}.{0 if kind == 'resnets' else 1}.{_inner_to_ldm(kind, rest, name)}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", name)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        slot = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}.get((kind, j))
        if slot is None:
            raise SteerError(f"LoRA module {name!r} has no LDM name (the mid block has 2 resnets, 1 attention)")
        return f"middle_block.{slot}.{_inner_to_ldm(kind, rest, name)}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks.{i * (L + 1) + j}.{0 if kind == 'resnets' else 1}.{_inner_to_ldm(kind, rest, name)}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", name)
    if m:
        i = int(m[1])
        return f"output_blocks.{i * (L + 1) + L}.{2 if _up_has_attention(family, i) else 1}.conv"
    raise SteerError(f"LoRA module {name!r} has no LDM / SGM name; export supports the UNet's attention, resnet, "
                     f"sampler, conv_in/out and embedding layers")


_RESNET_BACK = {v: k for k, v in _RESNET.items()}
_UNET_TOP_BACK = {v: k for k, v in _UNET_TOP.items()}


def _inner_from_ldm(slot: int, rest: str, name: str) -> Tuple[str, str]:
    if slot == 0:
        if rest not in _RESNET_BACK:
            raise SteerError(f"kohya module {name!r}: unknown resnet layer {rest!r}")
        return "resnets", _RESNET_BACK[rest]
    return "attentions", rest


def ldm_to_unet(name: str, layers_per_block: int = 2) -> str:
    """The inverse of ``unet_to_ldm`` (an LDM / SGM module path -> the diffusers path)."""
    L = layers_per_block
    if name in _UNET_TOP_BACK:
        return _UNET_TOP_BACK[name]
    m = re.fullmatch(r"input_blocks\.(\d+)\.0\.op", name)
    if m and int(m[1]) % (L + 1) == 0:
        return f"down_blocks.{int(m[1]) // (L + 1) - 1}.downsamplers.0.conv"
    m = re.fullmatch(r"input_blocks\.(\d+)\.([01])\.(.+)", name)
    if m and int(m[1]) >= 1:
        idx, slot = int(m[1]), int(m[2])
        kind, rest = _inner_from_ldm(slot, m[3], name)
        return f"down_blocks.{(idx - 1) // (L + 1)}.{kind}.{(idx - 1) % (L + 1)}.{rest}"
    m = re.fullmatch(r"middle_block\.([012])\.(.+)", name)
    if m:
        kind, j = {"0": ("resnets", 0), "1": ("attentions", 0), "2": ("resnets", 1)}[m[1]]
        rest = m[2] if kind == "attentions" else _inner_from_ldm(0, m[2], name)[1]
        return f"mid_block.{kind}.{j}.{rest}"
    m = re.fullmatch(r"output_blocks\.(\d+)\.([12])\.conv", name)
    if m:
        return f"up_blocks.{int(m[1]) // (L + 1)}.upsamplers.0.conv"
    m = re.fullmatch(r"output_blocks\.(\d+)\.([01])\.(.+)", name)
    if m:
        idx, slot = int(m[1]), int(m[2])
        kind, rest = _inner_from_ldm(slot, m[3], name)
        return f"up_blocks.{idx // (L + 1)}.{kind}.{idx % (L + 1)}.{rest}"
    raise SteerError(f"kohya module {name!r} is not an SD / SDXL UNet module")


def ldm_path(stem: str) -> str:
    """'input_blocks_4_1_transformer_blocks_0_attn1_to_out_0' -> the dotted LDM path: '_' separates
    path parts except inside the layer names that contain one."""
    path = stem.replace("_", ".")
    for word in ("input.blocks", "middle.block", "output.blocks", "transformer.blocks", "time.embed", "label.emb",
                 "to.q", "to.k", "to.v", "to.out", "proj.in", "proj.out", "in.layers", "out.layers",
                 "emb.layers", "skip.connection"):
        path = path.replace(word, word.replace(".", "_"))
    return path


def diffusers_path(stem: str) -> str:
    """'down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0' -> the dotted diffusers path."""
    path = stem.replace("_", ".")
    for word in ("down.blocks", "up.blocks", "mid.block", "transformer.blocks", "to.q", "to.k", "to.v", "to.out",
                 "proj.in", "proj.out", "conv.in", "conv.out", "conv.shortcut", "time.emb.proj", "time.embedding",
                 "add.embedding", "linear.1", "linear.2"):
        path = path.replace(word, word.replace(".", "_"))
    return path
