"""Adapters from diffusers pipelines to ``Process`` (see ``base.py``), and ``load``.

``from_pipe(pipe, **options)`` picks the family by the pipeline's class (or its bases);
``load(model_id_or_path, ...)`` reads ``model_index.json`` and loads offline-safe.
"""
from __future__ import annotations

from steer.pipelines.base import Process, guide
from steer.pipelines.families import FAMILIES, adapter_for, check_video_options, from_pipe  # noqa: F401
from steer.pipelines.loading import ModelNotFoundError, load

__all__ = ["Process", "guide", "FAMILIES", "adapter_for", "from_pipe", "load", "ModelNotFoundError"]
