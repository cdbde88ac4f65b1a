"""Export a LoRA saved by ``steer.finetune.lora.save_lora`` (diffusers / peft keys) to the kohya
layout that ComfyUI, A1111 / Forge and kohya's sd-scripts load, and read such a file back.

The kohya layout: one ``<name>.lora_down.weight`` (A, r x in), ``<name>.lora_up.weight`` (B, out x r)
and ``<name>.alpha`` (a 0-d tensor) per module; the update is W += (alpha / r) · up · down. ``<name>``
is ``lora_unet_`` + the module's path in the *original* model with ``.`` replaced by ``_``:


The module names: ``steer.finetune.kohya_unet`` (SD 1.x / 2.x, SDXL) and ``steer.finetune.kohya_flux``
(FLUX.1, whose fused projections become one block-diagonal LoRA).

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
from steer.finetune.kohya_flux import FLUX_BLOCK, FLUX_FUSED, flux_from_kohya, flux_split, flux_to_kohya
from steer.finetune.kohya_unet import SUPPORTED, Alphas, Modules, diffusers_path, ldm_path, ldm_to_unet, unet_to_ldm

WEIGHTS = "pytorch_lora_weights.safetensors"
FAMILIES = ("sd", "sdxl", "flux")  # sd: SD 1.x / 2.x
ALIASES = {"sd1": "sd", "sd15": "sd", "sd2": "sd", "flux1": "flux", "flux.1": "flux"}
FORMATS = ("kohya", "comfyui")  # ComfyUI reads the kohya layout
BASE_MODEL_VERSION = {"sd": "sd_v1", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}



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
            flux_split(n)[0] == "single" and flux_split(n)[2] in flux_single for n in modules):
        return "flux"
    raise SteerError(f"cannot tell which model this transformer LoRA is for; pass --family flux if it is FLUX.1 "
                     f"(supported: {SUPPORTED})")


def to_kohya(modules: Modules, alphas: Alphas, family: str, layers_per_block: int = 2) -> Dict[str, torch.Tensor]:
    """{diffusers module: (A, B)} + alphas -> the kohya state dict (``lora_unet_*``)."""
    if family == "flux":
        return flux_to_kohya(modules, alphas)
    out: Dict[str, torch.Tensor] = {}
    for name, (a, b) in modules.items():
        path = name if family == "sd" else unet_to_ldm(name, family, layers_per_block)
        key = "lora_unet_" + path.replace(".", "_")
        out.update({f"{key}.lora_down.weight": a, f"{key}.lora_up.weight": b,
                    f"{key}.alpha": torch.tensor(alphas[name])})
    return out


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
        return flux_from_kohya(names)
    modules: Modules = {}
    alphas: Alphas = {}
    for stem, (down, up, alpha) in names.items():
        stem = stem[len("lora_unet_"):]
        name = diffusers_path(stem) if family == "sd" else ldm_to_unet(ldm_path(stem), layers_per_block)
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
