"""Resumable checkpoints: safe to load, checksummed, written atomically, confined to their folder.

A checkpoint is one file ``checkpoints/step-NNNNNN.pt`` holding the LoRA weights, optimizer, LR
scheduler, EMA and RNG states (torch, python, numpy), the method's ``extra`` state, the run's
settings and its counters. On disk it is a two-line header and a ``torch.save`` payload::

    steer-checkpoint 1
    sha256=<64 hex digits of the payload> bytes=<payload length>
    <payload>

The payload is loaded with ``torch.load(weights_only=True)``: tensors and plain Python values
(dicts, lists, tuples, numbers, strings, None) only, never arbitrary objects, so a planted file
cannot run code. The checksum and length catch overwritten, truncated and empty files; a NaN/inf
tensor is refused too. Every failure is a one-line ``CheckpointError`` naming the file and the last
good checkpoint.

It is written with ``steer.io.atomic_write`` (a temporary file in the same folder, fsync'd,
``os.replace``-d into place); ``checkpoints/latest`` (``{"file": "step-NNNNNN.pt", "step": N}``) is
updated the same way afterwards, so a run killed at any moment leaves ``latest`` pointing at a
complete file. ``latest`` may only name a ``step-NNNNNN.pt`` file of its own folder; without it, the
newest such file is used.
"""
from __future__ import annotations

import hashlib
import io as _bytes_io
import json
import math
import pickle
import random
import re
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from steer.errors import SteerError
from steer.io import atomic_write_bytes

LATEST = "latest"
MAGIC = b"steer-checkpoint 1\n"
STEP_FILE = re.compile(r"step-(\d{6,})\.pt")
_HEADER = re.compile(rb"sha256=([0-9a-f]{64}) bytes=(\d+)\n")


class CheckpointError(SteerError):
    """A checkpoint that cannot be trusted (corrupt, unsafe, outside its folder); the message is one line."""


# ---- RNG states ---------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, python, numpy), as tensors and plain values."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch's deps here
        return state
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state["numpy"] = {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]))


# ---- the file format ----------------------------------------------------------------------------
def encode(state: dict[str, Any]) -> bytes:
    """``state`` as checkpoint bytes: header with checksum and length, then the ``torch.save`` payload."""
    buffer = _bytes_io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    return MAGIC + f"sha256={digest} bytes={len(payload)}\n".encode() + payload


def decode(data: bytes) -> dict[str, Any]:
    """The state in checkpoint bytes; raises ``ValueError`` with the reason (what is wrong, in a few words)."""
    if not data:
        raise ValueError("is empty (0 bytes)")
    if not data.startswith(MAGIC):
        raise ValueError("is not a steer checkpoint (no 'steer-checkpoint 1' header)")
    header = _HEADER.match(data, len(MAGIC))
    if header is None:
        raise ValueError("has a damaged header")
    payload = data[header.end():]
    expected = int(header.group(2))
    if len(payload) != expected:
        raise ValueError(f"is truncated ({len(payload)} of {expected} payload bytes)" if len(payload) < expected
                         else f"has {len(payload) - expected} bytes too many")
    if hashlib.sha256(payload).hexdigest() != header.group(1).decode():
        raise ValueError("fails its sha256 checksum (bytes were changed after it was written)")
    try:
        state = torch.load(_bytes_io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = next((ln for ln in str(e).splitlines() if ln.strip()), "")
        raise ValueError(f"holds objects other than tensors and plain values; refused to unpickle it ({first})") \
            from None
    except Exception as e:  # noqa: BLE001 - any other unreadable payload
        raise ValueError(f"cannot be read ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") \
            from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError("does not hold a checkpoint (no step)")
    bad = non_finite(state)
    if bad is not None:
        raise ValueError(f"holds NaN/inf values in {bad}")
    return state


def non_finite(obj: Any, where: str = "") -> Optional[str]:
    """Where the first floating tensor or float with NaN/inf in ``obj`` sits (e.g. ``lora['...']``), or None."""
    for key, value in _leaves(obj, where):
        if isinstance(value, torch.Tensor):
            if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
                return key
        elif isinstance(value, float) and not math.isfinite(value):
            return key
    return None


def _leaves(obj: Any, where: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{where}[{k!r}]" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{where}[{i}]")
    else:
        yield where, obj


# ---- the folder ---------------------------------------------------------------------------------
def step_of(path: Path) -> int:
    return int(STEP_FILE.fullmatch(Path(path).name).group(1))


def _inside(folder: Path, name: str) -> Optional[Path]:
    """``folder / name`` when ``name`` is a checkpoint file name whose real location is in ``folder``."""
    if not isinstance(name, str) or not STEP_FILE.fullmatch(name):
        return None
    path = Path(folder) / name
    return path if path.resolve().parent == Path(folder).resolve() else None


def step_files(folder: Path) -> list[Path]:
    """The checkpoint files of ``folder`` (symlinks leading out of it excluded), oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [_inside(folder, p.name) for p in folder.iterdir() if STEP_FILE.fullmatch(p.name)]
    return sorted((p for p in found if p is not None and p.is_file()), key=step_of)


def save(folder: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, delete all but the newest ``keep``."""
    folder = Path(folder)
    path = folder / f"step-{step:06d}.pt"
    atomic_write_bytes(path, encode({**state, "step": step, "rng": rng_state()}))
    atomic_write_bytes(folder / LATEST, json.dumps({"file": path.name, "step": step}).encode())
    older = [p for p in step_files(folder) if step_of(p) < step]
    for old in older[:max(0, len(older) - (keep - 1))]:
        old.unlink(missing_ok=True)
    return path


def latest(folder: Path) -> Optional[Path]:
    """The checkpoint ``latest`` names (it must be a ``step-NNNNNN.pt`` file of ``folder``), the newest
    checkpoint file when there is no ``latest``, or None when there is neither."""
    folder = Path(folder)
    pointer = folder / LATEST
    if not pointer.exists():
        files = step_files(folder)
        return files[-1] if files else None
    try:
        name = json.loads(pointer.read_text())["file"]
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise CheckpointError(f"{pointer} is unreadable ({e}); delete it to resume from the newest checkpoint "
                              f"file in {folder}") from None
    path = _inside(folder, name)
    if path is None:
        raise CheckpointError(f"{pointer} names {name!r}, which is not a checkpoint file inside {folder}; refused "
                              f"to load it (delete {pointer} to resume from the newest step-NNNNNN.pt there)")
    if not path.is_file():
        raise CheckpointError(f"{pointer} names {name}, which is missing; {_last_good_hint(folder, path)}")
    return path


def load(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, verified (RNG states restored by the caller with ``set_rng_state``).

    Raises ``CheckpointError`` (one line: the file, what is wrong, the last good checkpoint beside it)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e.strerror or e})") from None
    try:
        return decode(data)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} {e}; {_last_good_hint(path.parent, path)}") from None


def last_good(folder: Path, before: Optional[Path] = None) -> Optional[Path]:
    """The newest checkpoint of ``folder`` that loads and verifies (older than ``before`` if given), or None."""
    for path in reversed(step_files(folder)):
        if before is not None and (path == before or step_of(path) >= step_of(before)):
            continue
        try:
            decode(path.read_bytes())
        except (ValueError, OSError):
            continue
        return path
    return None


def _last_good_hint(folder: Path, bad: Path) -> str:
    good = last_good(folder, before=bad if STEP_FILE.fullmatch(bad.name) else None)
    pointer = Path(folder) / LATEST
    if good is None:
        return "no good checkpoint is left; start over with --overwrite"
    delete = f"{pointer}" if not bad.exists() else f"{bad} and {pointer}"
    return f"the last good one is {good} (step {step_of(good)}): delete {delete} to resume from it"
