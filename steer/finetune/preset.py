"""The ``Preset`` record: one reference implementation's defaults (see ``steer.finetune.presets``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Preset:
    """One reference's defaults: ``method``, ``config`` fields, ``process`` (steps, guidance)."""

    name: str
    method: str
    config: Mapping[str, Any]
    process: Mapping[str, Any]
    origin: Mapping[str, str]
    deviations: tuple[str, ...] = field(default_factory=tuple)
