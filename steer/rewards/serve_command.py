"""``steer serve-reward``: the command's flags, checked in one line each, then ``steer.rewards.server.serve``."""
# no ``from __future__ import annotations``: typer reads the options' annotations as objects
from typing import Optional

import typer

from steer import io
from steer.errors import SteerError
from steer.rewards.server import serve
from steer.rewards.wire import Limits


def serve_reward(
    spec: str = typer.Argument(..., help="Reward spec to serve: hps, hps=1,clip=0.5, mypkg.rewards:fn, ..."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface; "
                             "there is no authentication)."),
    port: int = typer.Option(8085, "--port", help="Port to listen on (0: any free port; the line printed says which)."),
    device: Optional[str] = typer.Option(None, "--device", help="Device of the reward model: cuda, cpu, ..."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float16, bfloat16 or float32."),
    max_body_mb: int = typer.Option(Limits.max_body_bytes >> 20, "--max-body-mb",
                                    help="Largest request body in MiB (HTTP 413 over it)."),
    max_images: int = typer.Option(Limits.max_images, "--max-images", help="Most images in one request."),
    max_image_pixels: int = typer.Option(Limits.max_image_pixels, "--max-image-pixels",
                                         help="Most pixels (H x W) of one image."),
    max_batch_pixels: int = typer.Option(Limits.max_batch_pixels, "--max-batch-pixels",
                                         help="Most pixels (B x H x W) of one request."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Serve a reward over HTTP; use it from another environment as --reward http://HOST:PORT."""
    with io.boundary(debug, interrupted="stopped serving"):
        if not 0 <= port <= 65535:
            raise SteerError(f"--port must be in 0..65535, got {port}")
        limits = _limits(max_body_mb, max_images, max_image_pixels, max_batch_pixels)
        io.check_device(device)
        serve(spec, host, port, device=device, dtype=io.parse_dtype(dtype), limits=limits, echo=typer.echo)


def _limits(max_body_mb: int, max_images: int, max_image_pixels: int, max_batch_pixels: int) -> Limits:
    for flag, value in (("--max-body-mb", max_body_mb), ("--max-images", max_images),
                        ("--max-image-pixels", max_image_pixels), ("--max-batch-pixels", max_batch_pixels)):
        if value < 1:
            raise SteerError(f"{flag} must be a positive integer, got {value}")
    return Limits(max_body_bytes=max_body_mb << 20, max_images=max_images, max_image_pixels=max_image_pixels,
                  max_batch_pixels=max_batch_pixels)
