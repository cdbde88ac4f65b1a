"""Writing results people can use: PNGs with their provenance, a grid, and ``trace.json``.

Every write goes through ``steer.io.atomic_write`` (a temporary name in the same folder, fsync'd
and renamed into place), so an interrupted run never leaves a half-written file under a final name.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from steer.io import atomic_write, atomic_write_bytes, write_json  # noqa: F401  (trace.json, used by steer.run)


def to_pil(image: Tensor):
    """(3, H, W) float in [0, 1] -> PIL image."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def save_png(path: Path, image: Tensor, info: Mapping[str, Any] | None = None) -> str:
    """Save one image atomically, with ``info`` as PNG text chunks (values JSON-encoded); returns the
    sha256 of the file's bytes."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    for k, v in (info or {}).items():
        meta.add_text(str(k), v if isinstance(v, str) else json.dumps(v, default=str))
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG", pnginfo=meta)
    data = buffer.getvalue()
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def make_grid(images: Tensor, pad: int = 2) -> Tensor:
    """(N, 3, H, W) -> one (3, H', W') image, near-square layout, white padding."""
    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for k in range(n):
        r, q = divmod(k, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        out[:, y:y + h, x:x + w] = images[k].detach().float().cpu().clamp(0, 1)
    return out


def versions(packages: Iterable[str] = ("steer", "torch", "diffusers", "transformers", "open_clip_torch", "peft")) -> dict:
    found = {}
    for p in packages:
        try:
            found[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            found[p] = None
    return found
