"""The FLUX.1 names of the kohya layout (see ``steer.finetune.lora_export``).

**FLUX.1** (``FluxTransformer2DModel``): the BFL names of kohya's FLUX LoRAs
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

"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

import torch

from steer.errors import SteerError
from steer.finetune.kohya_unet import SUPPORTED, Alphas, Modules

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


def flux_split(name: str) -> Tuple[Optional[str], Optional[int], str]:
    """'transformer_blocks.3.attn.to_q' -> ('double', 3, 'attn.to_q'); globals -> (None, None, name)."""
    m = re.fullmatch(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)", name)
    if not m:
        return None, None, name
    return ("double" if m[1] == "transformer_blocks" else "single"), int(m[2]), m[3]


def flux_to_kohya(modules: Modules, alphas: Alphas) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    fused: Dict[Tuple[str, int, str], Dict[str, str]] = {}  # (kind, i, bfl) -> {member: diffusers name}
    for name, (a, b) in modules.items():
        kind, i, rest = flux_split(name)
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


def flux_from_kohya(names: Dict[str, Tuple[torch.Tensor, torch.Tensor, float]]) -> Tuple[Modules, Alphas]:
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
