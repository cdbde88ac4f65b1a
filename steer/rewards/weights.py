"""Finding and safely loading reward weights, offline.

Order of resolution for a weight file: an explicit path (the reward's ``path=`` option), the
environment variable named in the reward's ``WeightFile`` (e.g. ``STEER_HPS_PATH``), then the Hugging
Face cache, read from disk with ``huggingface_hub.try_to_load_from_cache`` — no connection is ever
opened here, with or without ``HF_HUB_OFFLINE`` (``hf_hub_download(..., local_files_only=True)`` is
not used: it contacts the hub while building its request headers). A miss raises
``MissingWeightsError`` with one line: the file, where it comes from, and how to point at it.
Checkpoints are read with ``torch.load(weights_only=True)`` or safetensors.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch


class MissingWeightsError(FileNotFoundError):
    """A reward's weight file is not on this machine (the message is one line naming the fix)."""


@dataclass(frozen=True)
class WeightFile:
    """Where a weight file (or model directory) comes from and how a user points at it."""

    filename: str
    env: str
    url: str
    repo_id: Optional[str] = None  # Hugging Face repo holding ``filename`` (None: not on the hub)
    option: str = "path"  # the reward's keyword argument that takes a local path
    is_dir: bool = False  # a model directory (``from_pretrained``) recognised by ``filename``

    def hint(self) -> str:
        if self.is_dir:
            what, target = f"{self.repo_id} directory (with {self.filename})", "/path/to/dir"
        else:
            what, target = self.filename, f"/path/to/{self.filename}"
        return f"{what} not found: get it from {self.url}, then pass {self.option}={target} or set {self.env}={target}"


def resolve_file(wf: WeightFile, path: Optional[str | os.PathLike] = None) -> Path:
    """Local path of ``wf``: explicit ``path``, then ``$env``, then the Hugging Face cache."""
    for candidate in (path, os.environ.get(wf.env)):
        if candidate:
            p = Path(candidate).expanduser()
            if p.is_dir() and (p / wf.filename).is_file():
                return p / wf.filename
            if p.is_file():
                return p
            raise MissingWeightsError(f"{p} does not exist. " + wf.hint())
    cached = _from_hf_cache(wf.repo_id, wf.filename) if wf.repo_id else None
    if cached is None:
        raise MissingWeightsError(wf.hint())
    return cached


def resolve_dir(wf: WeightFile, path: Optional[str | os.PathLike] = None) -> str:
    """A model directory for ``from_pretrained``: explicit ``path``, ``$env``, or the cached repo snapshot."""
    for candidate in (path, os.environ.get(wf.env)):
        if candidate:
            p = Path(candidate).expanduser()
            if p.is_file():
                p = p.parent
            if not (p / wf.filename).is_file():
                raise MissingWeightsError(f"{p / wf.filename} does not exist. " + wf.hint())
            return str(p)
    cached = _from_hf_cache(wf.repo_id, wf.filename) if wf.repo_id else None
    if cached is None:
        raise MissingWeightsError(wf.hint())
    return str(cached.parent)


def _from_hf_cache(repo_id: str, filename: str) -> Optional[Path]:
    """The cached copy of ``filename`` of ``repo_id`` (revision main), found on disk only; None if absent."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # noqa: BLE001 - no hub client, a malformed id: report as missing
        return None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def load_state_dict(path: str | os.PathLike, key: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint without unpickling code (safetensors or ``weights_only=True``).

    ``key``: the entry holding the state dict inside a ``.pt`` checkpoint (HPS uses ``"state_dict"``).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = next((ln for ln in str(e).splitlines() if ln.strip()), "")
            raise ValueError(f"{path} holds objects other than tensors and plain values; refused to unpickle it "
                             f"({first}); use the published weight file, or convert it to .safetensors") from None
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            raise ValueError(f"{path}: expected a checkpoint with a {key!r} entry; is this the right file?")
        state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}
