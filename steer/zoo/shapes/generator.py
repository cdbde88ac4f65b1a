"""The shipped shapes text-to-image model: a ``StableDiffusionPipeline`` trained on the shapes world.

Built and trained by ``python -m steer.zoo.shapes.train`` (base CLIP, reward CLIP, then
``train_pipeline``; see its docstring for the architecture): a factor-2 ``AutoencoderKL`` (32x32 <->
4x16x16), a small ``UNet2DConditionModel``, the base shapes CLIP's text tower as a frozen ``CLIPTextModel`` with its offline 1000-token tokenizer,
and SD's ``DDIMScheduler``. Weights are stored in fp16 safetensors under ``weights/pipeline``.

Sample it with ``num_inference_steps=DEFAULT_NUM_INFERENCE_STEPS`` and
``guidance_scale=DEFAULT_GUIDANCE_SCALE`` (the settings its accuracies were measured at); the
diffusers defaults (50 steps, guidance 7.5) also work but cost twice the NFE.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from steer.zoo.quiet import quiet_loading

WEIGHTS_DIR = Path(__file__).parent / "weights" / "pipeline"
DEFAULT_NUM_INFERENCE_STEPS = 25
DEFAULT_GUIDANCE_SCALE = 4.0
# Latents per denoiser call on the CPU (steer's ``batch_size``; CFG doubles the UNet's rows). The
# small UNet slows per sample in large batches on 2 cores: 2.0 ms/sample at 64 UNet rows, 2.6 at 208,
# 3.8 at 832; FK with 8 particles on 52 captions ran 75.6 s unchunked, 47.9 s chunked at 64 latents
# (1.58x; images equal to 2.4e-6). On a GPU, leave it unset (one call for all particles).
CPU_BATCH_SIZE = 64


def pipeline(device: Optional[str | torch.device] = None, dtype: Optional[torch.dtype] = None,
             path: Optional[str | os.PathLike] = None):
    """Load the shipped shapes ``StableDiffusionPipeline`` offline (or one saved at ``path``).

    ``device`` defaults to CPU and ``dtype`` to float32 (the stored fp16 weights are upcast, since
    CPU convolutions in fp16 are slow); pass ``dtype=torch.float16`` on a GPU to keep them halved.
    """
    from diffusers import StableDiffusionPipeline

    where = Path(path) if path is not None else WEIGHTS_DIR
    if not (where / "model_index.json").exists():
        raise FileNotFoundError(f"no shapes pipeline at {where}; train one with "
                                f"`python -m steer.zoo.shapes.train_pipeline --out {where}`")
    with quiet_loading():
        pipe = StableDiffusionPipeline.from_pretrained(str(where), dtype=dtype or torch.float32,
                                                       local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or "cpu")
