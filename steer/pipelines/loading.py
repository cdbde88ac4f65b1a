"""``load``: a model id or a local directory -> ``Process``, offline-safe.

The family is read from ``model_index.json`` (its ``_class_name``) before any weight is touched, so
an unsupported pipeline fails fast. A hub id found in the local Hugging Face cache is loaded from its
cached snapshot folder without contacting the hub; one that is not cached is downloaded, unless
``HF_HUB_OFFLINE`` is set — after one request (no retries, ``PROBE_TIMEOUT`` seconds) shows the hub
answers. A model that is nowhere on disk and cannot be fetched raises ``ModelNotFoundError`` (a
``FileNotFoundError``) with a one-line fix, at once.
"""
from __future__ import annotations

import importlib

import json
import os
from pathlib import Path
from typing import Optional

import torch

from steer.errors import SteerError
from steer.pipelines.families import FAMILIES, check_video_options, from_pipe

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


PROBE_TIMEOUT = 10.0  # seconds the one request that checks the hub answers may take


class ModelNotFoundError(FileNotFoundError):
    """The model is neither a local diffusers directory nor in the Hugging Face cache."""


def load(model_id_or_path: str | os.PathLike, device=None, dtype=None, **options):
    """Load the diffusers pipeline at ``model_id_or_path`` and wrap it with its family's adapter.

    ``device``/``dtype`` (a ``torch.dtype`` or a name such as ``"fp16"``) are where and how the
    pipeline runs; ``options`` go to the adapter (``num_inference_steps``, ``guidance_scale``, ...).
    """
    from diffusers import DiffusionPipeline

    torch_dtype = _dtype(dtype)
    index, source, local_only = _model_index(model_id_or_path)
    _check_family(index.get("_class_name"), model_id_or_path)
    _check_options(index.get("_class_name"), options)
    try:
        pipe = DiffusionPipeline.from_pretrained(source, torch_dtype=torch_dtype, local_files_only=local_only)
    except OSError as err:  # files listed in model_index.json but missing on disk
        raise ModelNotFoundError(_missing(model_id_or_path, f"incomplete ({err})")) from err
    if device is not None:
        pipe = pipe.to(device)
    return from_pipe(pipe, **options)


def _check_options(class_name, options) -> None:
    """Options the family cannot take (``num_frames`` for an image pipeline), refused before loading."""
    if options.get("num_frames") is not None and class_name in FAMILIES:
        module, name = FAMILIES[class_name].split(":")
        check_video_options(getattr(importlib.import_module(module), name), class_name, options)


def _model_index(model_id_or_path) -> tuple[dict, str, bool]:
    """(model_index.json contents, what to pass to from_pretrained, local_files_only)."""
    path = Path(model_id_or_path).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise ModelNotFoundError(f"{path} has no model_index.json: pass the directory of a diffusers pipeline "
                                     f"(saved with pipe.save_pretrained(dir) or downloaded with `hf download ID`)")
        data = _read_index(index)
        _check_components(path, data)
        return data, str(path), True
    if path.is_file():
        raise ModelNotFoundError(f"--model {path} is a file; pass the folder that holds model_index.json "
                                 f"({path.parent if path.name == 'model_index.json' else 'a diffusers pipeline folder'})")
    name = str(model_id_or_path)
    if _looks_like_path(name):
        raise ModelNotFoundError(_missing(name, "not found"))
    snapshot = _cached_snapshot(name)
    if snapshot is not None:  # loaded from the cache's snapshot folder: no connection at all
        return _read_index(snapshot / "model_index.json"), str(snapshot), True
    return _read_index(Path(_download(name, "model_index.json"))), name, False


def _read_index(index: Path) -> dict:
    """model_index.json as a dict whose ``_class_name`` is a string, or a one-line SteerError naming the file."""
    try:
        data = json.loads(index.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SteerError(f"{index} is not valid JSON ({str(err).splitlines()[0]}); re-save the pipeline with "
                         f"pipe.save_pretrained(dir) or re-download it") from None
    if not isinstance(data, dict):
        raise SteerError(f"{index} holds a JSON {type(data).__name__}, not an object; re-save the pipeline with "
                         f"pipe.save_pretrained(dir) or re-download it")
    if not isinstance(data.get("_class_name"), str):
        raise SteerError(f"{index}: _class_name must be a pipeline class name string such as "
                         f"\"StableDiffusionPipeline\", got {data.get('_class_name')!r}")
    return data


def _check_components(path: Path, index: dict) -> None:
    """Each component folder model_index.json names exists, and holds safetensors, not only pickled .bin weights."""
    for key, spec in index.items():
        if key.startswith("_") or not isinstance(spec, (list, tuple)) or None in spec:
            continue
        folder = path / key
        if not folder.is_dir():
            raise ModelNotFoundError(f"{path}/model_index.json names component {key!r} but {folder} is missing; "
                                     f"copy the whole pipeline folder (or re-save it with pipe.save_pretrained(dir))")
        pickled = sorted(f.name for f in folder.glob("*.bin"))
        if pickled and not any(folder.glob("*.safetensors")):
            raise SteerError(f"{folder} holds only pickled weights ({pickled[0]}); steer loads safetensors only: "
                             f"convert them (load the pipeline and pipe.save_pretrained(dir, safe_serialization=True))")


def _cached_snapshot(repo_id: str) -> Optional[Path]:
    """The cached snapshot folder (revision main) of ``repo_id`` holding its model_index.json, read from disk only."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # noqa: BLE001 - a malformed id: not cached
        return None
    return Path(found).parent if isinstance(found, str) and Path(found).is_file() else None


def _download(repo_id: str, filename: str) -> str:
    """``filename`` of a hub repo that is not cached, downloaded; fails at once when offline or unreachable."""
    if _offline():
        raise ModelNotFoundError(_missing(repo_id, "not in the local Hugging Face cache (HF_HUB_OFFLINE is set)"))
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    try:  # one request without retries (hf_hub_download retries a refused connection for ~23 s)
        get_hf_file_metadata(hf_hub_url(repo_id, filename), timeout=PROBE_TIMEOUT)
        return hf_hub_download(repo_id, filename)
    except Exception as err:  # noqa: BLE001 - no network, unknown or gated repo: one line
        raise ModelNotFoundError(_missing(repo_id, f"not in the local Hugging Face cache, and the hub "
                                                   f"{_why(err)}")) from None


def _why(err: Exception) -> str:
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403, 404) or type(err).__name__ in ("RepositoryNotFoundError", "EntryNotFoundError",
                                                            "GatedRepoError"):
        return f"does not serve it (HTTP {status}: a typo, or a gated or private repo: log in with `hf auth login`)"
    first = next((ln for ln in str(err).splitlines() if ln.strip()), "")
    return f"could not be reached ({type(err).__name__}{': ' + first[:120] if first else ''})"


def _missing(name, why: str) -> str:
    return (f"model {str(name)!r} {why}: on a connected machine run `hf download {name}` (huggingface-cli "
            f"download {name}) to fill the cache, or pass the local directory of a diffusers pipeline")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE) or flag


def _check_family(class_name: Optional[str], name) -> None:
    if class_name not in FAMILIES:
        raise TypeError(
            f"{name} is a {class_name}; steer has no adapter for it. Supported families: "
            f"{', '.join(sorted(FAMILIES))}. For another model, load it yourself and subclass "
            f"steer.pipelines.Process (prepare / denoise / decode / schedule)."
        )


def _dtype(dtype) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"dtype must be a torch.dtype or one of {sorted(_DTYPES)}, got {dtype!r}")
