"""``steer serve-reward SPEC``: any reward spec served over HTTP (FastAPI + uvicorn), so a reward whose
dependencies conflict with the generator's lives in its own environment (``pip install 'steer[serve]'``).

    steer serve-reward hps --host 127.0.0.1 --port 8085
    steer generate --reward http://127.0.0.1:8085 ...        # from another environment

Endpoints (wire format: ``steer.rewards.wire``):

- ``GET /health`` -> ``{"status": "ok", "name", "spec", "differentiable": false, "version", "formats"}``
  (``differentiable`` is about the served scores: no gradient crosses HTTP).
- ``POST /score`` -> ``{"scores": [B floats], "name"}`` for one batch of B images and B prompts.
  A body that is not a batch is HTTP 400 (415: an unknown Content-Type), one too large 413, a
  reward that refuses the batch (its own ValueError, NaN scores) 422, a reward that crashes 500;
  every error is ``{"error": one line}``.

The reward runs under ``torch.no_grad`` one batch at a time (a lock), in a worker thread, so
``/health`` answers while a batch is scored. There is no authentication: keep ``--host`` on loopback
or a trusted network.
"""
# no ``from __future__ import annotations``: FastAPI reads the endpoints' annotations (``Request``) as objects
import socket
import threading
from typing import Callable, Optional

import typer

from steer import io
from steer.errors import SteerError

MAX_BODY_BYTES = 1 << 30  # 1 GiB: 256 float32 images of 1024 x 1024
INSTALL_HINT = "pip install 'steer[serve]' (fastapi and uvicorn)"


def create_app(reward, *, spec: str, device=None, max_bytes: int = MAX_BODY_BYTES):
    """The FastAPI application serving ``reward`` (a ``steer.rewards.Reward``)."""
    import torch
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    from importlib import metadata

    from steer.rewards import wire

    try:
        version = metadata.version("steer")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        version = None

    app = FastAPI(title=f"steer reward {reward.name}", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(message.split())}, status_code=status)

    def run(images, prompts) -> list[float]:
        with lock, torch.no_grad():
            if device is not None:
                images = images.to(device)
            return reward(images, prompts).detach().float().cpu().tolist()

    @app.get("/health")
    def health():
        return {"status": "ok", "name": reward.name, "spec": spec, "differentiable": False,
                "version": version, "formats": [wire.SAFETENSORS, wire.JSON]}

    @app.post("/score")
    async def score(request: Request):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            return error(413, f"the body is {int(declared)} bytes, over the server's limit of {max_bytes}; "
                              f"send smaller batches")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                return error(413, f"the body is over the server's limit of {max_bytes} bytes; send smaller batches")
        try:
            images, prompts = wire.decode(bytes(body), request.headers.get("content-type", ""))
        except wire.WireError as e:
            return error(e.status, str(e))
        try:
            scores = await run_in_threadpool(run, images, prompts)
        except (ValueError, TypeError, FloatingPointError) as e:  # the reward's own checks: not worth a retry
            return error(422, f"reward {reward.name!r} refused the batch: {type(e).__name__}: {_first_line(e)}")
        except Exception as e:  # noqa: BLE001 - a crashing reward model: 500, the client may retry
            return error(500, f"reward {reward.name!r} raised {type(e).__name__}: {_first_line(e)}")
        return {"scores": scores, "name": reward.name}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # 404 / 405 as one line
        return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}; the endpoints are "
                                      f"GET /health and POST /score")

    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port), or a SteerError naming the fix."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise SteerError(f"--host {host!r} is not an address here ({e.strerror}); use e.g. 127.0.0.1 or "
                         f"0.0.0.0") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise SteerError(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port "
                         f"(or stop what is using it)") from None
    return sock


def serve(spec: str, host: str = "127.0.0.1", port: int = 8085, *, device: Optional[str] = None,
          dtype=None, echo: Callable[[str], None] = print) -> None:
    """Load the reward ``spec`` and serve it until interrupted (Ctrl-C: a graceful stop)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise SteerError(f"steer serve-reward needs {e.name or 'fastapi'}: {INSTALL_HINT}") from None
    from steer.rewards.registry import load

    reward = load(spec, device=device, dtype=dtype)
    sock = listen(host, port)
    app = create_app(reward, spec=spec, device=device)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    echo(f"serving reward {reward.name!r} at http://{shown}:{bound} (POST /score, GET /health); Ctrl-C stops")
    uvicorn.Server(config).run(sockets=[sock])


def serve_reward(
    spec: str = typer.Argument(..., help="Reward spec to serve: hps, hps=1,clip=0.5, mypkg.rewards:fn, ..."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface; "
                             "there is no authentication)."),
    port: int = typer.Option(8085, "--port", help="Port to listen on (0: any free port; the line printed says which)."),
    device: Optional[str] = typer.Option(None, "--device", help="Device of the reward model: cuda, cpu, ..."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float16, bfloat16 or float32."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Serve a reward over HTTP; use it from another environment as --reward http://HOST:PORT."""
    with io.boundary(debug, interrupted="stopped serving"):
        if not 0 <= port <= 65535:
            raise SteerError(f"--port must be in 0..65535, got {port}")
        if device is not None:
            from steer.cli import _check_device

            _check_device(device)
        serve(spec, host, port, device=device, dtype=io.parse_dtype(dtype), echo=typer.echo)


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), "")
