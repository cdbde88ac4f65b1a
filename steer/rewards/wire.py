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
HTTP 400).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Sequence

import torch
from torch import Tensor

SAFETENSORS = "application/x-safetensors"
JSON = "application/json"


class WireError(ValueError):
    """A request body that is not a batch of images and prompts; one line saying what is wrong.
    ``status``: the HTTP status the server answers with (400, or 415 for an unknown Content-Type)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


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

def decode(body: bytes, content_type: str) -> tuple[Tensor, list[str]]:
    """A request body -> (images float32 (B, 3, H, W), B prompts), checked; else ``WireError``."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == SAFETENSORS:
        images, prompts = _decode_safetensors(body)
    elif kind == JSON:
        images, prompts = _decode_json(body)
    else:
        raise WireError(f"Content-Type {kind or 'missing'!r} is not a batch; send {SAFETENSORS} (tensor 'images' + "
                        f"metadata 'prompts') or {JSON} ({{'prompts': [...], 'images': [base64 PNG, ...]}})",
                        status=415)
    return _checked(images, prompts)


def _decode_safetensors(body: bytes) -> tuple[Tensor, object]:
    from safetensors.torch import load

    try:
        tensors = load(body)
        meta = _safetensors_metadata(body)
    except Exception as e:  # noqa: BLE001 - the library's parse errors: one line
        raise WireError(f"the body is not a safetensors file ({type(e).__name__}: {_first_line(e)})") from None
    if set(tensors) != {"images"}:
        raise WireError(f"the safetensors body must hold exactly one tensor 'images', got {sorted(tensors)}")
    if "prompts" not in meta:
        raise WireError("the safetensors body has no metadata 'prompts' (a JSON list of strings, one per image)")
    try:
        prompts = json.loads(meta["prompts"])
    except ValueError:
        raise WireError("the metadata 'prompts' is not JSON; write a JSON list of strings, one per image") from None
    images = tensors["images"]
    if not images.is_floating_point():
        raise WireError(f"'images' must be a float tensor in [0, 1], got {images.dtype}")
    return images.float(), prompts


def _safetensors_metadata(body: bytes) -> dict:
    """The ``__metadata__`` of a safetensors byte string (its JSON header)."""
    size = int.from_bytes(body[:8], "little")
    header = json.loads(body[8:8 + size])
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def _decode_json(body: bytes) -> tuple[Tensor, object]:
    try:
        data = json.loads(body)
    except ValueError:
        raise WireError("the body is not JSON; send {'prompts': [...], 'images': [base64 PNG, ...]}") from None
    if not isinstance(data, dict) or "images" not in data or "prompts" not in data:
        raise WireError("the JSON body needs keys 'prompts' (B strings) and 'images' (B base64 PNGs)")
    if not isinstance(data["images"], list) or not data["images"]:
        raise WireError("'images' must be a non-empty list of base64 PNG strings")
    return torch.stack([_png(k, text) for k, text in enumerate(data["images"])]), data["prompts"]


def _png(k: int, text) -> Tensor:
    from PIL import Image

    if not isinstance(text, str):
        raise WireError(f"image {k} is a {type(text).__name__}, not a base64 PNG string")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
        image.load()
    except (binascii.Error, ValueError):
        raise WireError(f"image {k} is not base64") from None
    except Exception as e:  # noqa: BLE001 - PIL's many decode errors: one line
        raise WireError(f"image {k} is not a readable image ({type(e).__name__})") from None
    array = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
    return array.reshape(image.height, image.width, 3).permute(2, 0, 1).float() / 255  # (3, H, W)


def _checked(images: Tensor, prompts) -> tuple[Tensor, list[str]]:
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise WireError(f"images must be (B, 3, H, W) with B >= 1, got {tuple(images.shape)}")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise WireError("prompts must be a list of strings, one per image")
    if len(prompts) != images.shape[0]:
        raise WireError(f"{images.shape[0]} images but {len(prompts)} prompts; send one prompt per image")
    if not torch.isfinite(images).all():
        raise WireError("images hold NaN/inf; send finite pixel values in [0, 1]")
    return images, prompts


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), "")
