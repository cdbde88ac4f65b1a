"""The wire format of a served reward (``steer serve-reward`` and ``HttpReward``): one batch per request.

``POST /score`` takes one of two bodies and answers ``{"scores": [B floats], "name": ...}``:

==========================  ==================================================================  ========
Content-Type                body                                                                exact?
==========================  ==================================================================  ========
``application/x-safetensors``  a safetensors file: tensor ``images`` float32 (B, 3, H, W) in       yes
                            [0, 1], metadata ``prompts`` = a JSON list of B strings
``application/json``        ``{"prompts": [B strings], "images": [B base64 PNGs]}``             8-bit
==========================  ==================================================================  ========

Safetensors (the client's default) is the raw little-endian float32 tensor behind an 8-byte header
length and a JSON header, so it is exact and readable from any language; PNG is for clients that
only have images. Decoding raises ``WireError`` with a one-line message (the server answers it as
HTTP 400, 413 for a batch over the ``Limits``, 415 for an unknown Content-Type).

A batch is checked against the ``Limits`` from what it declares (the safetensors header's shape,
each PNG's IHDR chunk) before any pixel is decoded or allocated, so a small body that would decode
to gigabytes (a decompression bomb) costs nothing.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import struct
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import Tensor

from steer.errors import first_line

SAFETENSORS = "application/x-safetensors"
JSON = "application/json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}  # safetensors dtype -> bytes per element


class WireError(ValueError):
    """A request body that is not a batch of images and prompts; one line saying what is wrong.
    ``status``: the HTTP status the server answers with (400; 413 over a limit; 415 an unknown Content-Type)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(" ".join(str(message).split()))
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one ``POST /score`` may hold (``steer serve-reward --max-...``); over any is HTTP 413.

    The defaults admit 32 images of 1024 x 1024 (384 MiB as float32) or one 4096 x 4096 image."""

    max_body_bytes: int = 512 << 20
    max_images: int = 256
    max_image_pixels: int = 4096 * 4096
    max_batch_pixels: int = 32 << 20

    def __post_init__(self):
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def check(self, count: int, height: int, width: int) -> None:
        """``count`` images of ``height`` x ``width``: WireError 413 over any limit (nothing is allocated)."""
        if count > self.max_images:
            raise WireError(f"the batch has {count} images, over the server's limit of {self.max_images} per "
                            f"request; send smaller batches (or start the server with a larger --max-images)", 413)
        if height * width > self.max_image_pixels:
            raise WireError(f"an image of {height} x {width} = {height * width} pixels is over the server's limit "
                            f"of {self.max_image_pixels} pixels per image (--max-image-pixels)", 413)
        if count * height * width > self.max_batch_pixels:
            raise WireError(f"the batch has {count} x {height} x {width} = {count * height * width} pixels, over "
                            f"the server's limit of {self.max_batch_pixels} per request; send smaller batches "
                            f"(or start the server with a larger --max-batch-pixels)", 413)


# ---- encoding (client side) ---------------------------------------------------------------------

def encode_tensor(images: Tensor, prompts: Sequence[str]) -> bytes:
    """(B, 3, H, W) images + B prompts -> safetensors bytes (a float32 CPU copy; the input is untouched)."""
    from safetensors.torch import save

    x = images.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()  # (B, 3, H, W)
    return save({"images": x}, metadata={"prompts": json.dumps(list(prompts))})


def encode_png(images: Tensor, prompts: Sequence[str]) -> bytes:
    """(B, 3, H, W) images in [0, 1] + B prompts -> the JSON body with base64 PNGs (8-bit, rounded)."""
    from PIL import Image

    x = images.detach().to(device="cpu", dtype=torch.float32, copy=True)  # (B, 3, H, W)
    pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
    encoded = []
    for array in pixels:
        buf = io.BytesIO()
        Image.fromarray(array, mode="RGB").save(buf, format="PNG")
        encoded.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return json.dumps({"prompts": list(prompts), "images": encoded}).encode("utf-8")


# ---- decoding (server side) ---------------------------------------------------------------------

def decode(body: bytes, content_type: str, limits: Limits = Limits()) -> tuple[Tensor, list[str]]:
    """A request body -> (images float32 (B, 3, H, W), B prompts), checked; else ``WireError``.

    Whatever the body, the only exception is a WireError (a parser's own error, too deep a JSON
    nesting, memory running out: all one line)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind not in (SAFETENSORS, JSON):
        raise WireError(f"Content-Type {kind[:60] or 'missing'!r} is not a batch; send {SAFETENSORS} (tensor "
                        f"'images' + metadata 'prompts') or {JSON} ({{'prompts': [...], 'images': [base64 PNG, "
                        f"...]}})", status=415)
    if len(body) > limits.max_body_bytes:
        raise WireError(f"the body is {len(body)} bytes, over the server's limit of {limits.max_body_bytes}; send "
                        f"smaller batches", 413)
    try:
        images, prompts = _decode_safetensors(body, limits) if kind == SAFETENSORS else _decode_json(body, limits)
        return _checked(images, prompts)
    except WireError:
        raise
    except MemoryError:
        raise WireError("the batch does not fit in the server's memory; send smaller batches", 413) from None
    except RecursionError:
        raise WireError("the body is nested too deeply to be a batch", 400) from None
    except Exception as e:  # noqa: BLE001 - any other parse failure of a hostile body: one line, 400
        raise WireError(f"the body is not a batch ({type(e).__name__}: {first_line(e)})") from None


def _decode_safetensors(body: bytes, limits: Limits) -> tuple[Tensor, object]:
    from safetensors.torch import load

    meta = _safetensors_header(body, limits)  # shapes checked before a byte is allocated
    if "prompts" not in meta:
        raise WireError("the safetensors body has no metadata 'prompts' (a JSON list of strings, one per image)")
    prompts = _json(meta["prompts"], "the metadata 'prompts'")
    try:
        tensors = load(body)
    except Exception as e:  # noqa: BLE001 - the library's parse errors: one line
        raise WireError(f"the body is not a safetensors file ({type(e).__name__}: {first_line(e)})") from None
    return tensors["images"].float(), prompts


def _safetensors_header(body: bytes, limits: Limits) -> dict:
    """Check the safetensors header of ``body`` (one float tensor 'images' of a shape within ``limits``,
    its byte range inside the body); its ``__metadata__``."""
    if len(body) < 8:
        raise WireError("the body is not a safetensors file (shorter than its 8-byte header length)")
    size = int.from_bytes(body[:8], "little")
    if size > len(body) - 8:
        raise WireError(f"the body is not a safetensors file (a header of {size} bytes in a body of {len(body)})")
    header = _json(body[8:8 + size], "the safetensors header")
    if not isinstance(header, dict):
        raise WireError("the body is not a safetensors file (its header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if set(header) != {"images"}:
        raise WireError(f"the safetensors body must hold exactly one tensor 'images', got "
                        f"{_preview(sorted(map(str, header)))}")
    info = header["images"]
    dtype = info.get("dtype") if isinstance(info, dict) else None
    if not isinstance(dtype, str) or dtype not in FLOAT_DTYPES:
        raise WireError(f"'images' must be a float tensor (F32, F16, BF16 or F64) in [0, 1], got {_preview(dtype)}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and len(shape) == 4 and all(_count(n) for n in shape)):
        raise WireError(f"images must be (B, 3, H, W), got shape {_preview(shape)}")
    count, channels, height, width = shape
    if channels != 3 or min(count, height, width) < 1:
        raise WireError(f"images must be (B, 3, H, W) with B, H, W >= 1, got {tuple(shape)}")
    limits.check(count, height, width)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(n) for n in offsets)
            and offsets[1] - offsets[0] == count * 3 * height * width * FLOAT_DTYPES[dtype]
            and offsets[1] <= len(body) - 8 - size):
        raise WireError(f"the safetensors 'images' data_offsets {_preview(offsets)} do not match its shape "
                        f"{tuple(shape)} and the body")
    return meta if isinstance(meta, dict) else {}


def _decode_json(body: bytes, limits: Limits) -> tuple[Tensor, object]:
    data = _json(body, "the body", hint="; send {'prompts': [...], 'images': [base64 PNG, ...]}")
    if not isinstance(data, dict) or "images" not in data or "prompts" not in data:
        raise WireError("the JSON body needs keys 'prompts' (B strings) and 'images' (B base64 PNGs)")
    encoded, prompts = data["images"], data["prompts"]
    if not isinstance(encoded, list) or not encoded:
        raise WireError("'images' must be a non-empty list of base64 PNG strings")
    limits.check(len(encoded), 1, 1)
    _check_prompts(prompts, len(encoded))
    files = [_base64(k, text) for k, text in enumerate(encoded)]
    sizes = [_png_size(k, data) for k, data in enumerate(files)]  # (height, width) from each IHDR
    for k, size in enumerate(sizes):
        if size != sizes[0]:
            raise WireError(f"image {k} is {size[0]} x {size[1]} but image 0 is {sizes[0][0]} x {sizes[0][1]}; "
                            f"send images of one size per request")
        limits.check(1, *size)
    limits.check(len(files), *sizes[0])
    return torch.stack([_png(k, data, sizes[0]) for k, data in enumerate(files)]), prompts


def _base64(k: int, text) -> bytes:
    if not isinstance(text, str):
        raise WireError(f"image {k} is a {type(text).__name__}, not a base64 PNG string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise WireError(f"image {k} is not base64") from None


def _png_size(k: int, data: bytes) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk, read before the image is decoded."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 24:
        raise WireError(f"image {k} is not a PNG (the JSON body carries base64 PNGs)")
    width, height = struct.unpack(">II", data[16:24])
    if not (width and height):
        raise WireError(f"image {k} is a PNG of {width} x {height} pixels")
    return height, width


def _png(k: int, data: bytes, size: tuple[int, int]) -> Tensor:
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
        if (image.height, image.width) != size:  # the IHDR checked is the one PIL read
            raise WireError(f"image {k} is not a readable PNG (its size changed on reading)")
        image.load()
        rgb = image.convert("RGB")
    except WireError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL's many decode errors: one line
        raise WireError(f"image {k} is not a readable PNG ({type(e).__name__})") from None
    array = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return array.reshape(rgb.height, rgb.width, 3).permute(2, 0, 1).float() / 255  # (3, H, W)


def _json(text, what: str, hint: str = ""):
    try:
        return json.loads(text)
    except RecursionError:
        raise WireError(f"{what} is JSON nested too deeply") from None
    except ValueError:  # UnicodeDecodeError included
        raise WireError(f"{what} is not JSON{hint}") from None


def _check_prompts(prompts, count: int) -> None:
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise WireError("prompts must be a list of strings, one per image")
    if len(prompts) != count:
        raise WireError(f"{count} images but {len(prompts)} prompts; send one prompt per image")


def _checked(images: Tensor, prompts) -> tuple[Tensor, list[str]]:
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise WireError(f"images must be (B, 3, H, W) with B >= 1, got {tuple(images.shape)}")
    _check_prompts(prompts, images.shape[0])
    if not torch.isfinite(images).all():
        raise WireError("images hold NaN/inf; send finite pixel values in [0, 1]")
    return images, prompts


def _count(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 62


def _preview(value) -> str:
    text = repr(value)
    return text[:60] + ("..." if len(text) > 60 else "")

