"""Export a LoRA saved by ``steer.finetune.lora.save_lora`` (diffusers / peft keys) to the kohya
layout that ComfyUI, A1111 / Forge and kohya's sd-scripts load, and read such a file back.

The kohya layout: one ``<name>.lora_down.weight`` (A, r x in), ``<name>.lora_up.weight`` (B, out x r)
and ``<name>.alpha`` (a 0-d tensor) per module; the update is W += (alpha / r) · up · down. ``<name>``
is ``lora_unet_`` + the module's path in the *original* model with ``.`` replaced by ``_``:

* **SD 1.x / 2.x** (``UNet2DConditionModel``): kohya's sd-scripts trains SD 1.x/2.x on the diffusers
  UNet, so its LoRAs name the diffusers module path (``lora_unet_down_blocks_1_attentions_0_transformer_
  blocks_0_attn1_to_q``); that is the layout diffusers' ``load_lora_weights`` reads for these pipelines
  (it maps LDM names only for SDXL), and ComfyUI and A1111 read it too (they map diffusers UNet names
  to their own). Export writes it.
* **SDXL**: kohya trains SDXL on the SGM UNet, so SDXL LoRAs use the original LDM / SGM names, which
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

* **FLUX.1** (``FluxTransformer2DModel``): the BFL names of kohya's FLUX LoRAs
  (``lora_unet_double_blocks_0_img_attn_qkv``), mapped as diffusers' ``_convert_kohya_flux_lora_to_diffusers``
  maps them back (see ``FLUX_BLOCK``, ``FLUX_FUSED``, ``FLUX_GLOBAL``). BFL fuses projections that
  diffusers keeps separate: ``img_attn.qkv`` = [to_q; to_k; to_v], ``txt_attn.qkv`` =
  [add_q_proj; add_k_proj; add_v_proj], a single block's ``linear1`` = [to_q; to_k; to_v; proj_mlp]
  (output rows stacked). For members m = 1..n with LoRAs (A_m, B_m, rank r, alpha α) the fused
  update [ΔW_1; ...; ΔW_n] with ΔW_m = (α/r) B_m A_m is exactly one LoRA of rank n·r::

      down = [A_1; A_2; ...; A_n]          (n·r x in, row-stacked)
      up   = blockdiag(B_1, B_2, ..., B_n) (Σ out_m x n·r)
      alpha = n·α                           (so alpha / rank = n·α / (n·r) = α / r)

  since up · down = [B_1 A_1; ...; B_n A_n]. A member without a LoRA gets A_m = 0, B_m = 0 (rank r,
  no update), so every fused LoRA splits into n equal rank blocks: diffusers' converter recognises
  that block-diagonal ("sparse") form and recovers each A_m, B_m, and ``import_kohya`` below does
  the same and drops the all-zero padding members. All members of one fused module must share r and
  α / r (one steer adapter always does). The final layer (``norm_out.linear`` ->
  ``final_layer_adaLN_modulation_1``, ``proj_out`` -> ``final_layer_linear``) is written with
  alpha = rank and α/r folded into ``lora_up`` (diffusers' converter ignores the alpha of those two),
  and ``norm_out.linear``'s up rows swap their (scale, shift) halves to BFL's (shift, scale).

Everything else round-trips bitwise: ``import_kohya(export)`` returns the very A / B tensors and alphas.
Only safetensors are read and written; nothing is unpickled.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from steer.errors import SteerError

WEIGHTS = "pytorch_lora_weights.safetensors"
FAMILIES = ("sd", "sdxl", "flux")  # sd: SD 1.x / 2.x
ALIASES = {"sd1": "sd", "sd15": "sd", "sd2": "sd", "flux1": "flux", "flux.1": "flux"}
FORMATS = ("kohya", "comfyui")  # ComfyUI reads the kohya layout
SUPPORTED = "SD 1.x/2.x (sd), SDXL (sdxl), FLUX.1 (flux)"
BASE_MODEL_VERSION = {"sd": "sd_v1", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}

Modules = Dict[str, Tuple[torch.Tensor, torch.Tensor]]  # diffusers module path -> (A, B)
Alphas = Dict[str, float]


# ---------------------------------------------------------------------------------------------- reading steer's LoRA

def _weights_file(path: Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / WEIGHTS, path / "lora" / WEIGHTS):
        if candidate.is_file():
            return candidate
    if (path / "adapter_model.safetensors").is_file() or (path / "lora" / "adapter_model.safetensors").is_file():
        raise SteerError(f"{path} holds a peft-format LoRA (a DDPM/DDIM UNet2DModel), which kohya tools do not load; "
                         f"export a LoRA of one of {SUPPORTED}")
    raise SteerError(f"no {WEIGHTS} in {path} or {path / 'lora'}; pass a steer finetune --out folder or its lora/ folder")


def read_lora(path) -> Tuple[str, Modules, Alphas, dict]:
    """A LoRA written by ``save_lora`` (its folder, the run folder above it, or the .safetensors file):
    (denoiser prefix 'unet' / 'transformer', {module: (A, B)}, {module: alpha}, the adapter config)."""
    from safetensors import safe_open

    file = _weights_file(path)
    with safe_open(str(file), framework="pt") as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if any(k.startswith(("lora_unet_", "lora_te")) for k in state):
        raise SteerError(f"{file} is already in the kohya layout; export reads the diffusers-format LoRA steer saves")
    prefixes = {k.split(".", 1)[0] for k in state}
    if len(prefixes) != 1 or not prefixes <= {"unet", "transformer"}:
        raise SteerError(f"{file} holds LoRA layers of {sorted(prefixes)}; export handles one denoiser (unet or "
                         f"transformer) LoRA as saved by steer's save_lora")
    prefix = prefixes.pop()
    raw = json.loads(metadata.get("lora_adapter_metadata", "{}") or "{}")
    config = {k.split(".", 1)[1]: v for k, v in raw.items() if k.startswith(prefix + ".")}
    if config.get("use_dora") or config.get("use_rslora"):
        raise SteerError(f"{file} is a {'DoRA' if config.get('use_dora') else 'rsLoRA'} adapter, which the kohya "
                         f"layout cannot express; train a plain LoRA to export it")
    if config.get("alpha_pattern"):
        raise SteerError(f"{file} has a per-module alpha_pattern; export supports one alpha per adapter")
    modules: Modules = {}
    for key in state:
        m = re.fullmatch(rf"{prefix}\.(.+)\.lora_A(?:\.default)?\.weight", key)
        if m is None:
            if not re.fullmatch(rf"{prefix}\.(.+)\.lora_B(?:\.default)?\.weight", key):
                raise SteerError(f"{file} has a key {key!r} that is not a LoRA A/B weight; export handles plain LoRA only")
            continue
        up_key = key.replace(".lora_A", ".lora_B")
        if up_key not in state:
            raise SteerError(f"{file} has {key} but no {up_key}; the file is incomplete, save the LoRA again")
        modules[m.group(1)] = (state[key], state[up_key])
    if not modules:
        raise SteerError(f"{file} holds no LoRA layers")
    if not metadata.get("lora_adapter_metadata"):
        alpha_of = {name: float(a.shape[0]) for name, (a, _) in modules.items()}  # diffusers' default: α = r
    else:
        alpha_of = {name: float(config["lora_alpha"]) for name in modules}
    return prefix, modules, alpha_of, config


# ------------------------------------------------------------------------------------------------- SD / SDXL UNets

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


# ----------------------------------------------------------------------------------------------------------- FLUX

# per double block i (transformer_blocks.i) / single block i (single_transformer_blocks.i): diffusers -> BFL
FLUX_BLOCK = {
    "double": {"attn.to_out.0": "img_attn.proj", "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
               "norm1.linear": "img_mod.lin", "attn.to_add_out": "txt_attn.proj",
               "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
               "norm1_context.linear": "txt_mod.lin"},
    "single": {"proj_out": "linear2", "norm.linear": "modulation.lin"},
}
# fused BFL modules: their diffusers members in row order, and each member's out dim in units of the
# inner dim D (= the fused module's input dim; FLUX's MLP ratio is 4)
FLUX_FUSED = {
    "double": {"img_attn.qkv": (("attn.to_q", 1), ("attn.to_k", 1), ("attn.to_v", 1)),
               "txt_attn.qkv": (("attn.add_q_proj", 1), ("attn.add_k_proj", 1), ("attn.add_v_proj", 1))},
    "single": {"linear1": (("attn.to_q", 1), ("attn.to_k", 1), ("attn.to_v", 1), ("proj_mlp", 4))},
}
FLUX_GLOBAL = {"x_embedder": "img_in", "context_embedder": "txt_in",
               "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
               "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
               "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
               "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
               "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
               "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
               "norm_out.linear": "final_layer.adaLN_modulation.1", "proj_out": "final_layer.linear"}
_FLUX_BAKED = ("norm_out.linear", "proj_out")  # diffusers' converter reads these without their alpha
_BLOCK_PREFIX = {"double": "transformer_blocks", "single": "single_transformer_blocks"}
_BFL_BLOCK = {"double": "double_blocks", "single": "single_blocks"}


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _flux_split(name: str) -> Tuple[Optional[str], Optional[int], str]:
    """'transformer_blocks.3.attn.to_q' -> ('double', 3, 'attn.to_q'); globals -> (None, None, name)."""
    m = re.fullmatch(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)", name)
    if not m:
        return None, None, name
    return ("double" if m[1] == "transformer_blocks" else "single"), int(m[2]), m[3]


def _flux_to_kohya(modules: Modules, alphas: Alphas) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    fused: Dict[Tuple[str, int, str], Dict[str, str]] = {}  # (kind, i, bfl) -> {member: diffusers name}
    for name, (a, b) in modules.items():
        kind, i, rest = _flux_split(name)
        if kind is None:
            if rest not in FLUX_GLOBAL:
                raise SteerError(f"LoRA module {name!r} has no FLUX.1 (BFL) name; {_FLUX_HINT}")
            key, alpha = "lora_unet_" + FLUX_GLOBAL[rest].replace(".", "_"), alphas[name]
            if rest in _FLUX_BAKED:  # alpha = rank, α/r folded into up
                b, alpha = b * (alpha / a.shape[0]), float(a.shape[0])
            if rest == "norm_out.linear":
                b = _swap_halves(b)
            out.update({f"{key}.lora_down.weight": a, f"{key}.lora_up.weight": b,
                        f"{key}.alpha": torch.tensor(alpha)})
            continue
        if rest in FLUX_BLOCK[kind]:
            key = f"lora_unet_{_BFL_BLOCK[kind]}_{i}_" + FLUX_BLOCK[kind][rest].replace(".", "_")
            out.update({f"{key}.lora_down.weight": a, f"{key}.lora_up.weight": b,
                        f"{key}.alpha": torch.tensor(alphas[name])})
            continue
        for bfl, members in FLUX_FUSED[kind].items():
            if rest in dict(members):
                fused.setdefault((kind, i, bfl), {})[rest] = name
                break
        else:
            raise SteerError(f"LoRA module {name!r} has no FLUX.1 (BFL) name; {_FLUX_HINT}")
    for (kind, i, bfl), present in sorted(fused.items()):
        members = FLUX_FUSED[kind][bfl]
        first = modules[next(iter(present.values()))][0]
        r, width = first.shape[0], first.shape[1]
        scales = {alphas[n] / modules[n][0].shape[0] for n in present.values()}
        ranks = {modules[n][0].shape[0] for n in present.values()}
        if len(scales) != 1 or len(ranks) != 1:
            raise SteerError(f"FLUX block {i}: the LoRAs fused into {bfl} ({sorted(present)}) differ in rank or "
                             f"alpha/rank; export needs one rank and alpha for them")
        alpha = alphas[next(iter(present.values()))]
        downs, ups = [], []
        for member, units in members:
            if member in present:
                a, b = modules[present[member]]
                if b.shape[0] != units * width:
                    raise SteerError(f"LoRA module {present[member]!r} has {b.shape[0]} outputs, not {units}x its "
                                     f"input width {width}; is this a FLUX.1 transformer?")
            else:  # padding member: rank r, no update
                a = torch.zeros(r, width, dtype=first.dtype)
                b = torch.zeros(units * width, r, dtype=first.dtype)
            downs.append(a)
            ups.append(b)
        key = f"lora_unet_{_BFL_BLOCK[kind]}_{i}_" + bfl.replace(".", "_")
        out.update({f"{key}.lora_down.weight": torch.cat(downs, 0), f"{key}.lora_up.weight": torch.block_diag(*ups),
                    f"{key}.alpha": torch.tensor(alpha * len(members))})
    return out


_FLUX_HINT = f"export supports {SUPPORTED}"


def _flux_from_kohya(names: Dict[str, Tuple[torch.Tensor, torch.Tensor, float]]) -> Tuple[Modules, Alphas]:
    modules: Modules = {}
    alphas: Alphas = {}
    back_global = {v.replace(".", "_"): k for k, v in FLUX_GLOBAL.items()}
    for key, (down, up, alpha) in names.items():
        stem = key[len("lora_unet_"):]
        if stem in back_global:
            name = back_global[stem]
            if name == "norm_out.linear":
                up = _swap_halves(up)
            modules[name], alphas[name] = (down, up), alpha
            continue
        m = re.fullmatch(r"(double_blocks|single_blocks)_(\d+)_(.+)", stem)
        if not m:
            raise SteerError(f"kohya module {key!r} is not a FLUX.1 module")
        kind = "double" if m[1] == "double_blocks" else "single"
        prefix = f"{_BLOCK_PREFIX[kind]}.{m[2]}."
        plain = {v.replace(".", "_"): k for k, v in FLUX_BLOCK[kind].items()}
        fused = {k.replace(".", "_"): v for k, v in FLUX_FUSED[kind].items()}
        if m[3] in plain:
            modules[prefix + plain[m[3]]], alphas[prefix + plain[m[3]]] = (down, up), alpha
        elif m[3] in fused:
            members = fused[m[3]]
            n, rank, width = len(members), down.shape[0], down.shape[1]
            rows = [units * width for _, units in members]
            if rank % n or sum(rows) != up.shape[0]:
                raise SteerError(f"kohya module {key!r}: fused LoRA of rank {rank} / {up.shape[0]} outputs does not "
                                 f"split into {n} members; it was not written by steer's export")
            r, start = rank // n, 0
            for j, ((member, _), count) in enumerate(zip(members, rows)):
                a = down[j * r:(j + 1) * r]
                block = up[start:start + count]
                b = block[:, j * r:(j + 1) * r]
                off = torch.cat([block[:, :j * r], block[:, (j + 1) * r:]], 1)
                if off.count_nonzero():
                    raise SteerError(f"kohya module {key!r} is not block-diagonal; it was not written by steer's export")
                start += count
                if not a.count_nonzero() and not b.count_nonzero():
                    continue  # padding member
                modules[prefix + member], alphas[prefix + member] = (a.contiguous(), b.contiguous()), alpha / n
        else:
            raise SteerError(f"kohya module {key!r} is not a FLUX.1 module")
    return modules, alphas


# ------------------------------------------------------------------------------------------------------- the API

def resolve_family(family: Optional[str], prefix: str, modules: Modules, denoiser: Optional[str] = None) -> str:
    """The family named (``sd``, ``sdxl``, ``flux`` and aliases) or inferred from the denoiser class /
    the module names; a family the kohya layout is not written for -> one line naming the supported ones."""
    if family is not None:
        fam = ALIASES.get(family.lower(), family.lower())
        if fam not in FAMILIES:
            raise SteerError(f"unsupported family {family!r} for a kohya / ComfyUI export; supported: {SUPPORTED}")
        want = "transformer" if fam == "flux" else "unet"
        if prefix != want:
            raise SteerError(f"--family {fam} needs a {want} LoRA, this one is on the {prefix}; drop --family or "
                             f"pass the right one ({SUPPORTED})")
        return fam
    if denoiser is not None and denoiser not in ("UNet2DConditionModel", "FluxTransformer2DModel"):
        raise SteerError(f"a {denoiser} LoRA has no kohya / ComfyUI export here; supported: {SUPPORTED}")
    if prefix == "unet":
        names = list(modules)
        if any(n.startswith("down_blocks.0.attentions.") for n in names):
            return "sd"
        if any(n.startswith("add_embedding.") or re.search(r"\.transformer_blocks\.[1-9]", n) for n in names) or \
                any(n.endswith("attn2.to_k") and a.shape[1] == 2048 for n, (a, _) in modules.items()):
            return "sdxl"  # SDXL: the added-condition embedding, 2-10 transformer layers per block, 2048-d context
        if any(".upsamplers." in n for n in names):
            raise SteerError("this UNet LoRA targets upsamplers, whose LDM name differs between SD 1.x and SDXL; "
                             "pass --family sd or --family sdxl")
        return "sd"  # diffusers-path names: diffusers, ComfyUI and A1111 read them for SDXL as well
    flux_single = {m for _, ms in FLUX_FUSED["single"].items() for m, _ in ms} | set(FLUX_BLOCK["single"])
    if denoiser == "FluxTransformer2DModel" or any(
            _flux_split(n)[0] == "single" and _flux_split(n)[2] in flux_single for n in modules):
        return "flux"
    raise SteerError(f"cannot tell which model this transformer LoRA is for; pass --family flux if it is FLUX.1 "
                     f"(supported: {SUPPORTED})")


def to_kohya(modules: Modules, alphas: Alphas, family: str, layers_per_block: int = 2) -> Dict[str, torch.Tensor]:
    """{diffusers module: (A, B)} + alphas -> the kohya state dict (``lora_unet_*``)."""
    if family == "flux":
        return _flux_to_kohya(modules, alphas)
    out: Dict[str, torch.Tensor] = {}
    for name, (a, b) in modules.items():
        path = name if family == "sd" else unet_to_ldm(name, family, layers_per_block)
        key = "lora_unet_" + path.replace(".", "_")
        out.update({f"{key}.lora_down.weight": a, f"{key}.lora_up.weight": b,
                    f"{key}.alpha": torch.tensor(alphas[name])})
    return out


def _ldm_path(stem: str) -> str:
    """'input_blocks_4_1_transformer_blocks_0_attn1_to_out_0' -> the dotted LDM path: '_' separates
    path parts except inside the layer names that contain one."""
    path = stem.replace("_", ".")
    for word in ("input.blocks", "middle.block", "output.blocks", "transformer.blocks", "time.embed", "label.emb",
                 "to.q", "to.k", "to.v", "to.out", "proj.in", "proj.out", "in.layers", "out.layers",
                 "emb.layers", "skip.connection"):
        path = path.replace(word, word.replace(".", "_"))
    return path


def _diffusers_path(stem: str) -> str:
    """'down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0' -> the dotted diffusers path."""
    path = stem.replace("_", ".")
    for word in ("down.blocks", "up.blocks", "mid.block", "transformer.blocks", "to.q", "to.k", "to.v", "to.out",
                 "proj.in", "proj.out", "conv.in", "conv.out", "conv.shortcut", "time.emb.proj", "time.embedding",
                 "add.embedding", "linear.1", "linear.2"):
        path = path.replace(word, word.replace(".", "_"))
    return path


def from_kohya(state: Dict[str, torch.Tensor], family: str, layers_per_block: int = 2) -> Tuple[Modules, Alphas]:
    """The inverse of ``to_kohya`` (bitwise, but for FLUX's final layer, exported with α/r folded in)."""
    names: Dict[str, Tuple[torch.Tensor, torch.Tensor, float]] = {}
    for key in state:
        if not key.endswith(".lora_down.weight"):
            continue
        stem = key[:-len(".lora_down.weight")]
        if not stem.startswith("lora_unet_"):
            raise SteerError(f"kohya key {key!r} is not a UNet / transformer LoRA (text-encoder LoRAs are not read)")
        down, up = state[key], state.get(stem + ".lora_up.weight")
        if up is None:
            raise SteerError(f"kohya file has {key} but no {stem}.lora_up.weight")
        alpha = state.get(stem + ".alpha")
        names[stem] = (down, up, float(alpha.item()) if alpha is not None else float(down.shape[0]))
    if family == "flux":
        return _flux_from_kohya(names)
    modules: Modules = {}
    alphas: Alphas = {}
    for stem, (down, up, alpha) in names.items():
        stem = stem[len("lora_unet_"):]
        name = _diffusers_path(stem) if family == "sd" else ldm_to_unet(_ldm_path(stem), layers_per_block)
        modules[name], alphas[name] = (down, up), alpha
    return modules, alphas


def export_lora(source, out, family: Optional[str] = None, layers_per_block: Optional[int] = None) -> Path:
    """Write steer's diffusers-format LoRA (``source``: a ``steer finetune --out`` folder, its ``lora/``
    folder or the .safetensors) as a kohya / ComfyUI ``.safetensors`` at ``out``; returns ``out``.
    ``layers_per_block`` (SDXL's LDM names only) defaults to 2, SDXL's."""
    from safetensors.torch import save_file

    source, out = Path(source), Path(out)
    if out.suffix != ".safetensors":
        raise SteerError(f"--out {out} must end in .safetensors (kohya / ComfyUI LoRAs are safetensors files)")
    prefix, modules, alphas, config = read_lora(source)
    denoiser = _run_config(source).get("denoiser")
    fam = resolve_family(family, prefix, modules, denoiser)
    lpb = int(layers_per_block) if layers_per_block is not None else 2
    if lpb < 1:
        raise SteerError(f"--layers-per-block must be >= 1, got {lpb}")
    state = {k: v.contiguous() for k, v in to_kohya(modules, alphas, fam, lpb).items()}
    ranks = sorted({a.shape[0] for a, _ in modules.values()})
    metadata = {"ss_network_module": "networks.lora", "ss_base_model_version": BASE_MODEL_VERSION[fam],
                "ss_network_dim": str(ranks[0]) if len(ranks) == 1 else "dynamic",
                "ss_network_alpha": str(config.get("lora_alpha", ranks[0])),
                "steer_family": fam, "steer_layers_per_block": str(lpb), "format": "pt"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(out)
    return out


def _run_config(source: Path) -> dict:
    for folder in (source, source.parent, source.parent.parent):
        cfg = folder / "config.json"
        if folder.is_dir() and cfg.is_file():
            try:
                data = json.loads(cfg.read_text())
            except (OSError, ValueError):
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def import_kohya(path, family: Optional[str] = None,
                 layers_per_block: Optional[int] = None) -> Tuple[Dict[str, torch.Tensor], Alphas]:
    """Read a kohya file written by ``export_lora`` back into steer's keys: ({'<prefix>.<module>.lora_A.weight':
    A, ...lora_B...}, {module: alpha}). Family and layers_per_block default to the file's own metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    fam = family or meta.get("steer_family")
    if fam not in FAMILIES:
        raise SteerError(f"{path}: pass family= one of {FAMILIES} (the file does not name its family)")
    lpb = int(layers_per_block if layers_per_block is not None else meta.get("steer_layers_per_block", 2))
    modules, alphas = from_kohya(state, fam, lpb)
    prefix = "transformer" if fam == "flux" else "unet"
    peft = {}
    for name, (a, b) in modules.items():
        peft[f"{prefix}.{name}.lora_A.weight"] = a
        peft[f"{prefix}.{name}.lora_B.weight"] = b
    return peft, alphas


# ------------------------------------------------------------------------------------------------------- the CLI

def export_command(
    source: Path,
    fmt: str = "kohya",
    out: Optional[Path] = None,
    family: Optional[str] = None,
    layers_per_block: Optional[int] = None,
    debug: bool = False,
) -> None:
    """Body of ``steer lora export``."""
    import typer

    from steer import io

    with io.boundary(debug):
        if fmt.lower() not in FORMATS:
            raise SteerError(f"--format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}")
        folder = Path(source) if Path(source).is_dir() else Path(source).parent
        if (folder / WEIGHTS).is_file():  # the lora/ folder itself: write beside it, not into it
            folder = folder.parent
        target = out if out is not None else folder / "lora_comfyui.safetensors"
        path = export_lora(source, target, family, layers_per_block)
        typer.echo(f"wrote {path}")


def lora_app():
    """The ``steer lora`` command group (``steer lora export``)."""
    import typer

    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="LoRA utilities: export steer's LoRA for ComfyUI / A1111 / kohya.")

    @app.command("export")
    def export(
        source: Path = typer.Argument(..., help="A steer finetune --out folder, its lora/ folder or the .safetensors."),
        fmt: str = typer.Option("kohya", "--format", help="kohya or comfyui (the same layout: ComfyUI reads kohya's)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output .safetensors (default: lora_comfyui.safetensors beside lora/)."),
        family: Optional[str] = typer.Option(None, "--family", help="sd (SD 1.x/2.x), sdxl or flux (default: inferred)."),
        layers_per_block: Optional[int] = typer.Option(None, "--layers-per-block",
                                                       help="SDXL UNet layers_per_block for the LDM names "
                                                            "(default 2, the released SDXL's)."),
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    ):
        """Write the LoRA in the kohya layout that ComfyUI, A1111 and kohya's sd-scripts load."""
        export_command(source, fmt, out, family, layers_per_block, debug)

    return app
