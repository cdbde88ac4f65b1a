"""Fully sharded LoRA fine-tuning: ``accelerate launch --config_file fsdp.yaml -m steer finetune ...``.

FSDP (Zhao et al. 2023, "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel"), in its
second version (torch's ``fully_shard``, "FSDP2"), configured by accelerate's FSDP plugin: each rank keeps
1/N of the denoiser's frozen base weights and all-gathers a block's weights just before that block runs
(and again in the backward pass), freeing them after (``reshard_after_forward``).

What is sharded: the denoiser (``unet`` / ``transformer``), one FSDP group per block class: the plugin's
``fsdp_transformer_layer_cls_to_wrap`` when given, else the model's own ``_no_split_modules`` (diffusers'
list of its blocks: ``BasicTransformerBlock``, ``ResnetBlock2D``, ``CrossAttnUpBlock2D``, ``UpBlock2D`` for
the SD UNet; ``FluxTransformerBlock`` / ``FluxSingleTransformerBlock``; ``WanTransformerBlock``; ...), else
the members of its top-level ``ModuleList`` s; the rest of the denoiser (embeddings, norms, in/out
projections) forms the root group.

What is not sharded: the LoRA parameters (``ignored_params``): they are replicated, so every rank holds the
whole adapter and its optimizer state, and their gradients are averaged over ranks as under DDP
(``distributed.average_gradients``); a run therefore trains the same LoRA as a DDP run, and saving,
checkpoints, EMA and resume read the adapter as they do without sharding (nothing to gather). Nor the
VAE, the text encoders, a second expert (Wan 2.2's ``transformer_2``) or the reward models: every rank
holds a full copy of those on its device.

Plugin settings read: ``fsdp_version`` (2 only: FSDP1 wraps the denoiser in a new module, which the
pipeline would not call), ``fsdp_reshard_after_forward``, ``fsdp_offload_params`` (an offload policy) and
``fsdp_transformer_layer_cls_to_wrap``. Not read: ``fsdp_auto_wrap_policy`` size-based wrapping and
``min_num_params`` (the block classes above are used), ``fsdp_state_dict_type`` (the adapter is
replicated, so it is saved whole), ``fsdp_cpu_ram_efficient_loading`` (each rank loads the pipeline on
the CPU before its share moves to its device), the plugin's mixed precision policy (the denoiser runs in
the pipeline's dtype, under accelerate's autocast as without sharding), ``fsdp_activation_checkpointing`` (set
``gradient_checkpointing=True``: diffusers' own, which works under sharding).

Every rank must make the same denoiser calls (each call all-gathers): AlignProp's truncation, drawn per
rank, is refused under sharding.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import torch
from torch import nn

from steer.errors import SteerError


def requested(accelerator=None) -> bool:
    """Whether this run is to be sharded: accelerate runs FSDP (GPUs), or ``accelerate launch`` was given an
    FSDP config (``ACCELERATE_USE_FSDP``, which accelerate's state ignores on CPU-only machines)."""
    if accelerator is not None and str(getattr(accelerator, "distributed_type", "")).endswith("FSDP"):
        return True
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1")


def load_devices(device: Optional[str]):
    """(where ``steer finetune`` loads the pipeline, where it loads the rewards). Under an FSDP config the pipeline
    loads on the CPU (``shard_denoiser`` moves each rank's share of the denoiser and the other components to the
    rank's device, so no rank ever holds the whole denoiser on its accelerator) and the rewards on the rank's
    device (a ``--device`` is refused); otherwise both follow ``--device`` (None: the rewards follow the pipeline)."""
    if not requested():
        return device, None
    if device is not None:
        raise SteerError(f"--device {device} is not used under an FSDP config (each rank runs on its own device, "
                         f"which accelerate launch assigns); drop --device")
    from accelerate import PartialState

    # accelerate runs FSDP on GPUs only; on a CPU-only machine the ranks form a gloo group (cpu=True), as under DDP
    return "cpu", PartialState(cpu=not torch.cuda.is_available()).device


def plugin(accelerator):
    """The run's ``FullyShardedDataParallelPlugin`` (accelerate's, or one read from the ``FSDP_*`` environment
    ``accelerate launch`` sets), checked to be FSDP2; None when the run is not sharded."""
    if not requested(accelerator):
        return None
    found = getattr(getattr(accelerator, "state", None), "fsdp_plugin", None)
    if found is None:
        from accelerate.utils import FullyShardedDataParallelPlugin

        found = FullyShardedDataParallelPlugin()
    if int(getattr(found, "fsdp_version", 1) or 1) != 2:
        raise SteerError("steer shards the denoiser with FSDP2 only: set fsdp_version: 2 in the accelerate config "
                         "(FSDP1 would wrap the denoiser in a new module that the pipeline does not call)")
    return found


def block_classes(model: nn.Module, names: Optional[list[str]] = None) -> list[str]:
    """The class names each wrapped in its own FSDP group (``names`` from the plugin, else the model's)."""
    present = {type(m).__name__ for m in model.modules()}
    if names:
        missing = [n for n in names if n not in present]
        if missing:
            raise SteerError(f"fsdp_transformer_layer_cls_to_wrap names {missing}, which {type(model).__name__} does "
                             f"not contain; name its blocks (e.g. {sorted(_default_classes(model))[:4]})")
        return list(names)
    return sorted(_default_classes(model))


def _default_classes(model: nn.Module) -> set[str]:
    present = {type(m).__name__ for m in model.modules()}
    declared = [n for n in (getattr(model, "_no_split_modules", None) or []) if n in present]
    if declared:
        return set(declared)
    return {type(b).__name__ for child in model.children() if isinstance(child, nn.ModuleList) for b in child}


def shard_denoiser(process, model: nn.Module, params: list[nn.Parameter], accelerator, fsdp_plugin) -> list[str]:
    """Shard ``model``'s frozen weights over the ranks in place (``fully_shard`` per block, then the root), keep the
    LoRA ``params`` replicated, and move the rest of the pipeline to the rank's device; returns the classes
    wrapped (none for a single process, which only moves the pipeline to its device)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import OffloadPolicy, fully_shard

    device = torch.device(accelerator.device)
    if accelerator.num_processes == 1:  # nothing to shard over: the whole pipeline on the one device
        model.to(device)
        _place_rest(process, model, params, device)
        return []
    mesh = init_device_mesh(device.type, (accelerator.num_processes,))
    classes = block_classes(model, fsdp_plugin.transformer_cls_names_to_wrap)
    offload = fsdp_plugin.cpu_offload if isinstance(fsdp_plugin.cpu_offload, OffloadPolicy) else OffloadPolicy()
    options = {"mesh": mesh, "reshard_after_forward": bool(fsdp_plugin.reshard_after_forward),
               "offload_policy": offload, "ignored_params": set(params)}
    wanted = set(classes)
    for module in reversed(list(model.modules())):  # innermost first, as FSDP2 nests
        if module is not model and type(module).__name__ in wanted:
            fully_shard(module, **options)
    fully_shard(model, **options)
    _place_rest(process, model, params, device)
    return classes


def _place_rest(process, model: nn.Module, params: list[nn.Parameter], device: torch.device) -> None:
    """The replicated LoRA parameters and every other component on the rank's ``device`` (FSDP moved the shards)."""
    for p in params:
        p.data = p.data.to(device)
    pipe = process.pipe
    for component in getattr(pipe, "components", {}).values():
        if isinstance(component, nn.Module) and component is not model:
            component.to(device)
    move_process(process, device)


def move_process(process, device: torch.device) -> None:
    """Point ``process`` at ``device``: its ``device`` and the tensors it built at construction on the old one (the
    schedule, FLUX's position ids, ...), top-level attributes and tensor fields of dataclasses such as ``Schedule``."""
    for name, value in list(vars(process).items()):
        if isinstance(value, torch.Tensor):
            setattr(process, name, value.to(device))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            moved = {f.name: getattr(value, f.name).to(device) for f in dataclasses.fields(value)
                     if isinstance(getattr(value, f.name), torch.Tensor)}
            if moved:
                setattr(process, name, dataclasses.replace(value, **moved))
    process.device = device


def check_method(method: str, config) -> None:
    """Refuse a method whose ranks would make different denoiser calls under sharding."""
    if method == "draft" and getattr(config, "variant", None) == "alignprop":
        raise SteerError("AlignProp draws its truncation per rank, so sharded ranks would backprop through different "
                         "numbers of denoiser calls; use variant draft (fixed k) or drop the FSDP config (DDP)")
