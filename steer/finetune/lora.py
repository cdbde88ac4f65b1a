"""LoRA on the denoiser (UNet or transformer) with peft, saved so ``pipe.load_lora_weights(dir)``
restores the trained behaviour exactly.

LoRA (Hu et al. 2022): W + (α/r)·B·A on the attention projections ``to_q, to_k, to_v, to_out.0``
by default. The adapter is attached with diffusers' ``add_adapter`` (peft under the hood) and saved
with the family's own ``save_lora_weights`` together with ``*_lora_adapter_metadata`` — without the
metadata diffusers reloads with α = r, which silently changes the strength when α ≠ r.

Denoisers without diffusers' peft mixin (``UNet2DModel`` of ``DDPMPipeline`` / ``DDIMPipeline``) get
the adapter from ``peft.inject_adapter_in_model`` directly; their pipelines have no
``load_lora_weights``, so ``save_lora`` writes peft's own format (``adapter_config.json`` +
``adapter_model.safetensors``) and ``load_lora(pipe, dir)`` restores it. Target their convolutions
(``conv1, conv2, conv_out``) as well as the attention projections: most of such a UNet is convolutional.
"""
from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from steer import io

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER = "default"


def pipeline_of(process_or_pipe):
    """The diffusers pipeline behind a ``Process`` (``process.pipe``), or the pipeline itself."""
    pipe = getattr(process_or_pipe, "pipe", process_or_pipe)
    if not hasattr(pipe, "components"):
        raise TypeError(f"{type(process_or_pipe).__name__} holds no diffusers pipeline (.pipe); LoRA fine-tuning "
                        f"needs a diffusers pipeline wrapped by steer.pipelines.from_pipe")
    return pipe


def denoiser_name(pipe) -> str:
    """'unet' or 'transformer': the component LoRA is attached to and saved as."""
    for name in ("unet", "transformer"):
        if getattr(pipe, name, None) is not None:
            return name
    raise TypeError(f"{type(pipe).__name__} has neither a unet nor a transformer to fine-tune")


def denoiser(pipe) -> nn.Module:
    return getattr(pipe, denoiser_name(pipe))


def attach_lora(pipe, rank: int = 4, alpha: float | None = None,
                target_modules: Sequence[str] = DEFAULT_TARGETS, init_seed: int = 0) -> list[nn.Parameter]:
    """Add a LoRA adapter (rank r, scale α/r; α defaults to r) to the denoiser; returns its trainable
    parameters (float32). The base weights stay frozen. peft initializes B = 0, so the model's outputs
    are unchanged until the first update; A is drawn from a seeded RNG scope."""
    from peft import LoraConfig

    pipe = pipeline_of(pipe)
    model = denoiser(pipe)
    if getattr(model, "peft_config", None) and ADAPTER in model.peft_config:
        raise ValueError(f"the {denoiser_name(pipe)} already has a LoRA adapter {ADAPTER!r}; fine-tune a fresh "
                         f"pipeline, or fuse the existing LoRA first (pipe.fuse_lora(); pipe.unload_lora_weights())")
    _check_targets(model, target_modules)
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                        init_lora_weights="gaussian", target_modules=list(target_modules))
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        if hasattr(model, "add_adapter"):
            model.add_adapter(config, adapter_name=ADAPTER)
        else:  # no diffusers peft mixin (UNet2DModel): peft injects the layers and sets model.peft_config
            from peft import inject_adapter_in_model

            config.base_model_name_or_path = None
            inject_adapter_in_model(config, model, ADAPTER)
    params = trainable_parameters(pipe)
    for p in params:
        p.data = p.data.float()
    return params


def _check_targets(model: nn.Module, targets: Sequence[str]) -> None:
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(f"LoRA target modules {missing} not found in {type(model).__name__}; "
                         f"pass target_modules among its linear layers (default {list(DEFAULT_TARGETS)})")


def trainable_parameters(pipe) -> list[nn.Parameter]:
    """The LoRA parameters, in a fixed (named) order."""
    model = denoiser(pipeline_of(pipe))
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    if not params:
        raise ValueError("no LoRA parameters found; call attach_lora(pipe) first")
    for p in params:
        p.requires_grad_(True)
    return params


def lora_state_dict(pipe) -> dict[str, torch.Tensor]:
    """peft's state dict of the adapter (names without the adapter suffix), detached copies."""
    from peft.utils import get_peft_model_state_dict

    model = denoiser(pipeline_of(pipe))
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=ADAPTER).items()}


def load_lora_state_dict(pipe, state: dict[str, torch.Tensor]) -> None:
    """Copy a ``lora_state_dict`` back into the attached adapter (in place, bitwise)."""
    from peft.utils import set_peft_model_state_dict

    model = denoiser(pipeline_of(pipe))
    result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ValueError(f"LoRA state does not fit this model: unexpected keys {unexpected[:3]}; the checkpoint was "
                         f"made with another model or other target modules")


def adapter_metadata(pipe) -> dict:
    """The peft config as saved next to the weights (rank, alpha, targets)."""
    cfg = denoiser(pipeline_of(pipe)).peft_config[ADAPTER].to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}


def save_lora(pipe, directory: str | Path) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` with the family's ``save_lora_weights`` and the adapter
    metadata; ``type(pipe).from_pretrained(...).load_lora_weights(directory)`` restores it."""
    pipe = pipeline_of(pipe)
    name = denoiser_name(pipe)
    saver = getattr(type(pipe), "save_lora_weights", None)
    params = inspect.signature(saver).parameters if saver is not None else {}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if f"{name}_lora_layers" not in params:
        _save_peft_format(pipe, directory)
        io.follow_umask(directory)  # safetensors writes its files 0600
        return directory
    layers = lora_state_dict(pipe)  # peft keys (lora_A / lora_B), which every diffusers LoRA loader reads
    kwargs = {f"{name}_lora_layers": layers}
    if f"{name}_lora_adapter_metadata" in params:
        kwargs[f"{name}_lora_adapter_metadata"] = adapter_metadata(pipe)
    saver(str(directory), safe_serialization=True, **kwargs)
    io.follow_umask(directory)  # safetensors writes its files 0600; everything else here follows the umask
    return directory


PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _save_peft_format(pipe, directory: Path) -> Path:
    """For pipelines without a diffusers LoRA loader: peft's config + weights files (``load_lora`` reads them)."""
    import json

    from safetensors.torch import save_file

    (directory / PEFT_CONFIG).write_text(json.dumps(adapter_metadata(pipe), indent=2))
    save_file({k: v.contiguous() for k, v in lora_state_dict(pipe).items()}, str(directory / PEFT_WEIGHTS))
    return directory


def load_lora(pipe, directory: str | Path) -> None:
    """Attach and load a LoRA saved by ``save_lora``: ``pipe.load_lora_weights`` where the family has it,
    else the peft-format files written for pipelines without one (``DDPMPipeline``, ``DDIMPipeline``)."""
    import json

    from safetensors.torch import load_file

    pipe, directory = pipeline_of(pipe), Path(directory)
    if not (directory / PEFT_CONFIG).exists():
        if not hasattr(pipe, "load_lora_weights"):
            raise FileNotFoundError(f"{directory} holds no {PEFT_CONFIG}; pass a folder written by save_lora")
        pipe.load_lora_weights(str(directory))
        return
    cfg = json.loads((directory / PEFT_CONFIG).read_text())
    attach_lora(pipe, cfg["r"], cfg["lora_alpha"], tuple(cfg["target_modules"]))
    load_lora_state_dict(pipe, load_file(str(directory / PEFT_WEIGHTS)))


def _set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(enabled)


@contextlib.contextmanager
def lora_disabled(pipe) -> Iterator[None]:
    """The reference model: the denoiser with its adapter switched off inside the block."""
    model = denoiser(pipeline_of(pipe))
    _set_adapters_enabled(model, False)
    try:
        yield
    finally:
        _set_adapters_enabled(model, True)


def merge_lora(pipe) -> None:
    """Fold the adapter into the base weights (W += α/r·B·A) and remove it; for fast inference."""
    pipe = pipeline_of(pipe)
    model = denoiser(pipe)
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge(adapter_names=[ADAPTER])
            if not hasattr(model, "delete_adapters"):
                module.delete_adapter(ADAPTER)
    if hasattr(model, "delete_adapters"):
        model.delete_adapters(ADAPTER)
    else:
        del model.peft_config[ADAPTER]
