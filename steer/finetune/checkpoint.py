"""Resumable checkpoints, written atomically.

A checkpoint is one file ``checkpoints/step-NNNNNN.pt`` holding the LoRA weights, optimizer, LR
scheduler, EMA and RNG states (torch, python, numpy) and the step. It is written with
``steer.io.atomic_write`` (a temporary file in the same folder, fsync'd, ``os.replace``-d into place);
``checkpoints/latest`` (the name of the newest complete checkpoint) is updated the same way
afterwards. A run killed at any moment therefore leaves ``latest`` pointing at a complete file.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional

import torch

from steer.io import atomic_torch_save, atomic_write_bytes

LATEST = "latest"


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, python, numpy)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy ships with torch's deps here
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def save(folder: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, delete all but the newest ``keep``."""
    folder = Path(folder)
    path = folder / f"step-{step:06d}.pt"
    atomic_torch_save({**state, "step": step, "rng": rng_state()}, path)
    atomic_write_bytes(folder / LATEST, json.dumps({"file": path.name, "step": step}).encode())
    for old in sorted(folder.glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def latest(folder: Path) -> Optional[Path]:
    """The newest complete checkpoint, or None."""
    pointer = Path(folder) / LATEST
    if not pointer.exists():
        return None
    try:
        name = json.loads(pointer.read_text())["file"]
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"{pointer} is unreadable ({e}); delete it to start over") from None
    path = Path(folder) / name
    if not path.exists():
        raise RuntimeError(f"{pointer} names {name}, which is missing; delete {pointer} to start over")
    return path


def load(path: Path) -> dict[str, Any]:
    """A checkpoint's contents (RNG states restored by the caller with ``set_rng_state``)."""
    return torch.load(path, map_location="cpu", weights_only=False)
