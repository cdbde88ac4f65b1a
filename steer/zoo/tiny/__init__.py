"""Tiny random-init pipelines of every supported family, built from configs with the real
diffusers / transformers classes and offline tokenizers. Used by tests and benchmarks.

``build(family, **kw)`` -> a diffusers pipeline in eval mode with gradients off, on CPU, float32.
Each family lives in ``steer/zoo/tiny/<family>.py`` exposing ``build_pipeline(**kw)``.
"""
from __future__ import annotations

import importlib

FAMILIES = ("sd", "sd_v", "sdxl", "sd3", "flux", "pixart", "ddpm")


def build(family: str, **kw):
    """Tiny pipeline of ``family`` (one of ``FAMILIES``)."""
    module = {"sd_v": "sd"}.get(family, family)
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose from {FAMILIES}")
    mod = importlib.import_module(f"steer.zoo.tiny.{module}")
    if family == "sd_v":
        kw.setdefault("prediction_type", "v_prediction")
    return mod.build_pipeline(**kw)
