"""Multi-process fine-tuning (``accelerate launch``): the run's ``Accelerator`` (with its experiment trackers,
``config.report_to``) and the averaging of the LoRA gradients over ranks.

Each rank draws its own prompts and noise; after the micro-steps the LoRA gradients are averaged over
ranks with ``accelerator.reduce`` — DDP's semantics. torch's ``DistributedDataParallel`` wrapper itself
is not used because reward backprop calls the denoiser several times before one backward, which its
reducer does not allow.
"""
from __future__ import annotations

from typing import Sequence

import torch

from steer.errors import SteerError
from steer.finetune import sharding
from steer.finetune.config import TrainConfig, tracker_names


# the pip package behind each tracker name (``config.TRACKERS``)
_PACKAGES = {"comet_ml": "comet-ml"}


def check_trackers(names: Sequence[str]) -> None:
    """Refuse (one line naming the ``pip install``) a tracker whose package is not installed; accelerate itself
    would drop it silently."""
    from accelerate.tracking import get_available_trackers

    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in names:
        if name not in available:
            package = _PACKAGES.get(name, name)
            raise SteerError(f"report_to={name!r} needs the {package} package, which is not installed: "
                             f"pip install {package}" + (" (or pip install 'steer[track]')"
                                                         if name == "tensorboard" else ""))


def make_accelerator(process, config: TrainConfig, logging_dir=None):
    """The run's ``Accelerator``; with ``config.report_to`` its trackers (``log_with``) write under ``logging_dir``."""
    from accelerate import Accelerator

    cpu = torch.device(getattr(process, "device", "cpu")).type == "cpu"
    if sharding.requested():  # the pipeline waits on the CPU until its denoiser is sharded to the ranks' GPUs
        cpu = not torch.cuda.is_available()
    names = tracker_names(config.report_to)
    if not names:
        return Accelerator(mixed_precision=config.mixed_precision, cpu=cpu)
    check_trackers(names)
    return Accelerator(mixed_precision=config.mixed_precision, cpu=cpu, log_with=names,
                       project_dir=None if logging_dir is None else str(logging_dir))


def add_trackers(accelerator, config: TrainConfig, logging_dir) -> None:
    """Give a caller's ``accelerator`` made without ``log_with`` the trackers of ``config.report_to``."""
    from accelerate.tracking import filter_trackers

    names = tracker_names(config.report_to)
    if not names or accelerator.log_with:
        return
    check_trackers(names)
    if accelerator.project_configuration.logging_dir is None:
        accelerator.project_configuration.logging_dir = str(logging_dir)
    accelerator.log_with = filter_trackers(names, accelerator.logging_dir)


def average_gradients(accelerator, params: Sequence[torch.Tensor], world: int) -> None:
    """Replace each ``params`` gradient by its mean over the ``world`` ranks (a missing one counts as zeros)."""
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
