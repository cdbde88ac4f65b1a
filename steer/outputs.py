"""Writing results people can use: PNGs with their provenance, a grid, videos, and ``trace.json``.

Videos (``save_video``) are MP4 (H.264, yuv420p, CRF 18) written with PyAV (the ``video`` extra:
``pip install 'steer[video]'``), the provenance as JSON in the container's ``comment`` tag and the
prompt as its ``title``; without PyAV, lossless animated WebP with PIL, the provenance as JSON in the
EXIF ImageDescription. ``read_video`` reads either back with the library that wrote it.

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


VIDEO_FORMATS = ("mp4", "webp")
_EXIF_DESCRIPTION = 0x010E


def video_format() -> str:
    """``"mp4"`` when PyAV with an H.264 encoder is installed, else ``"webp"`` (PIL)."""
    try:
        import av

        return "mp4" if "libx264" in av.codecs_available else "webp"
    except ImportError:
        return "webp"


def _frames_uint8(frames: Tensor):
    """(F, 3, H, W) float in [0, 1] -> (F, H, W, 3) uint8 numpy."""
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"a video is (F, 3, H, W) frames in [0, 1], got {tuple(frames.shape)}")
    return (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _mp4(frames, fps: float, meta: Mapping[str, str]) -> bytes:
    import av
    import numpy as np

    F, H, W, _ = frames.shape
    if H % 2 or W % 2:  # yuv420p needs even sides: repeat the last row / column
        frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        for k, v in meta.items():
            container.metadata[k] = v
        stream = container.add_stream("libx264", rate=_rate(fps), options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


def _webp(frames, fps: float, meta: Mapping[str, str]) -> bytes:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    exif = Image.Exif()
    exif[_EXIF_DESCRIPTION] = meta["comment"]
    buffer = io.BytesIO()
    images[0].save(buffer, format="WEBP", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0, lossless=True, exif=exif.tobytes())
    return buffer.getvalue()


def save_video(path: Path, frames: Tensor, fps: float, info: Mapping[str, Any] | None = None) -> str:
    """Save frames (F, 3, H, W) in [0, 1] atomically as a video at ``fps``, its format from the suffix of
    ``path`` (``.mp4`` or ``.webp``), with ``info`` (JSON) as its provenance; returns the sha256 of the
    file's bytes."""
    kind = Path(path).suffix.lstrip(".").lower()
    if kind not in VIDEO_FORMATS:
        raise ValueError(f"a video is written as .mp4 or .webp, got {str(path)!r}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    info = dict(info or {})
    meta = {"comment": json.dumps(info, default=str)}
    if isinstance(info.get("prompt"), str):
        meta["title"] = info["prompt"]
    data = (_mp4 if kind == "mp4" else _webp)(_frames_uint8(frames), float(fps), meta)
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def read_video(path: Path) -> tuple[Tensor, dict]:
    """A video written by ``save_video`` -> (frames (F, 3, H, W) float in [0, 1], its provenance dict)."""
    import numpy as np

    path = Path(path)
    if path.suffix.lower() == ".mp4":
        import av

        with av.open(str(path)) as container:
            comment = container.metadata.get("comment", "{}")
            arrays = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    else:
        from PIL import Image, ImageSequence

        with Image.open(path) as image:
            comment = image.getexif().get(_EXIF_DESCRIPTION, "{}")
            arrays = [np.array(f.convert("RGB")) for f in ImageSequence.Iterator(image)]
    frames = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255  # (F, 3, H, W)
    try:
        info = json.loads(comment)
    except ValueError:
        info = {}
    return frames, info
