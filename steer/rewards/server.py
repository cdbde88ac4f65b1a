"""``steer serve-reward SPEC``: any reward spec served over HTTP (FastAPI + uvicorn), so a reward whose
dependencies conflict with the generator's lives in its own environment (``pip install 'steer[serve]'``).

    steer serve-reward hps --host 127.0.0.1 --port 8085
    steer generate --reward http://127.0.0.1:8085 ...        # from another environment

Endpoints (wire format: ``steer.rewards.wire``):

- ``GET /health`` -> ``{"status": "ok", "name", "spec", "differentiable": false, "version", "formats",
  "limits"}`` (``differentiable`` is about the served scores: no gradient crosses HTTP; ``limits`` are
  the ``wire.Limits``, which ``HttpReward`` splits its batches by).
- ``POST /score`` -> ``{"scores": [B floats], "name"}`` for one batch of B images and B prompts.
  A body that is not a batch is HTTP 400 (415: an unknown Content-Type), one over a limit 413
  (the body's bytes, the number of images, the pixels of one image or of the batch, checked from
  what the body declares before anything is decoded), a reward that refuses the batch (its own
  ValueError, NaN scores) 422, a reward that crashes 500. Every answer that is not a 200 is
  ``{"error": one line}``, whatever the request (a catch-all turns any other failure into a 500 of
  one line), and the server's log gets at most one line per request (a client that leaves mid-body,
  a reward that fails), never a traceback.

Decoding and scoring run in worker threads (at most ``decoding`` batches decoded at once, the reward
one batch at a time under ``torch.no_grad``), so ``/health`` answers while batches are read and scored.
There is no authentication: keep ``--host`` on loopback or a trusted network (a non-loopback address
is warned about at start-up).
"""
# no ``from __future__ import annotations``: FastAPI reads the endpoints' annotations (``Request``) as objects
import asyncio
import ipaddress
import json
import logging
import math
import socket
import threading
from typing import Callable, Optional

from steer.errors import SteerError, first_line
from steer.rewards.wire import Limits

MAX_BODY_BYTES = Limits.max_body_bytes  # the default of --max-body-mb, in bytes
INSTALL_HINT = "pip install 'steer[serve]' (fastapi and uvicorn)"
ENDPOINTS = "the endpoints are GET /health and POST /score"
log = logging.getLogger(__name__)


def create_app(reward, *, spec: str, device=None, limits: Limits = Limits(), decoding: int = 2,
               max_bytes: Optional[int] = None):
    """The FastAPI application serving ``reward`` (a ``steer.rewards.Reward``) within ``limits``
    (``max_bytes``: their ``max_body_bytes`` alone)."""
    import dataclasses

    import torch
    from fastapi import FastAPI, Request
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    from importlib import metadata

    from steer.rewards import wire

    try:
        version = metadata.version("steer")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        version = None

    if max_bytes is not None:
        limits = dataclasses.replace(limits, max_body_bytes=max_bytes)
    app = FastAPI(title=f"steer reward {reward.name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(OneLineErrors)
    lock = threading.Lock()
    slots = asyncio.Semaphore(decoding)  # bounds the decoded batches in memory; waiting holds no thread

    def run(images, prompts) -> list[float]:
        with lock, torch.no_grad():
            if device is not None:
                images = images.to(device)
            scores = reward(images, prompts)
            if not isinstance(scores, torch.Tensor):
                raise RuntimeError(f"returned a {type(scores).__name__}, not a tensor of scores")
            scores = scores.detach().float().cpu().reshape(-1).tolist()
        if len(scores) != len(prompts):
            raise RuntimeError(f"returned {len(scores)} scores for {len(prompts)} images")
        if not all(math.isfinite(s) for s in scores):
            raise ValueError("returned NaN/inf scores")
        return scores

    @app.get("/health")
    async def health():  # async: never waits for a worker thread
        return {"status": "ok", "name": reward.name, "spec": spec, "differentiable": False,
                "version": version, "formats": [wire.SAFETENSORS, wire.JSON], "limits": limits.__dict__}

    @app.post("/score")
    async def score(request: Request):
        try:
            body = await read_body(request, limits.max_body_bytes)
        except ClientDisconnect:
            return disconnected(request, "mid-body")
        except wire.WireError as e:
            return error(e.status, str(e))
        async with slots:
            try:
                images, prompts = await run_in_threadpool(wire.decode, body, request.headers.get("content-type", ""),
                                                          limits)
            except wire.WireError as e:
                return error(e.status, str(e))
            del body
            try:
                scores = await run_in_threadpool(run, images, prompts)
            except (ValueError, TypeError, FloatingPointError) as e:  # the reward's own checks: not worth a retry
                return failed(422, f"reward {reward.name!r} refused the batch: {type(e).__name__}: {first_line(e, 300)}")
            except Exception as e:  # noqa: BLE001 - a crashing reward model: 500, the client may retry
                return failed(500, f"reward {reward.name!r} raised {type(e).__name__}: {first_line(e, 300)}")
        return {"scores": scores, "name": reward.name}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # 404 / 405 as one line
        return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path[:100]}; {ENDPOINTS}")

    return app


async def read_body(request, max_bytes: int) -> bytes:
    """The request's body; WireError 413 once it is over ``max_bytes`` (the declared length first)."""
    from steer.rewards.wire import WireError

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise WireError(f"the body is {int(declared)} bytes, over the server's limit of {max_bytes}; send smaller "
                        f"batches (or start the server with a larger --max-body-mb)", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise WireError(f"the body is over the server's limit of {max_bytes} bytes; send smaller batches (or "
                            f"start the server with a larger --max-body-mb)", 413)
    return bytes(body)


def error(status: int, message: str):
    """``{"error": message}`` as one line, with HTTP ``status``."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": _one_line(message)}, status_code=status)


def failed(status: int, message: str):
    """An error answer that is the server's (or its reward's) failure: also one log line."""
    log.log(logging.ERROR if status >= 500 else logging.WARNING, "POST /score: HTTP %d: %s", status,
            _one_line(message))
    return error(status, message)


def disconnected(request, when: str):
    """A client that left: one log line (nobody reads the answer)."""
    client = request.client
    who = f"{client.host}:{client.port}" if client else "a client"
    log.warning("%s disconnected %s (%s %s)", who, when, request.method, request.url.path[:100])
    return error(400, f"the client disconnected {when}")


class OneLineErrors:
    """ASGI middleware inside Starlette's error handler: any exception an endpoint lets out becomes a
    500 ``{"error": one line}`` and one log line, never a traceback or a text/plain 500."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as e:  # noqa: BLE001 - the catch-all: one JSON line, one log line
            from starlette.requests import ClientDisconnect

            where = f"{scope.get('method')} {str(scope.get('path'))[:100]}"
            if isinstance(e, (ClientDisconnect, ConnectionError)):
                log.warning("%s: the client disconnected", where)
                return
            message = f"the server failed on {where}: {type(e).__name__}: {first_line(e, 300)}"
            log.error("%s", message)
            if not started:
                await error(500, message)(scope, receive, send)


def one_line_protocol():
    """uvicorn's HTTP protocol, answering a request that is not HTTP with ``{"error": ...}`` (not text/plain)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class OneLineProtocol(AutoHTTPProtocol):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"error": f"{msg.rstrip('.')}: not an HTTP/1.1 request; {ENDPOINTS}"}).encode()
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: "
                                 b"%d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            self.transport.close()

    return OneLineProtocol


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port), or a SteerError naming the fix."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise SteerError(f"--host {host!r} is not an address here ({getattr(e, 'strerror', None) or e}); use e.g. "
                         f"127.0.0.1 or 0.0.0.0") from None
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


def is_loopback(sock: socket.socket) -> bool:
    """Whether ``sock`` is bound to a loopback address (0.0.0.0 and :: are every interface: not loopback)."""
    try:
        return ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_loopback
    except ValueError:
        return False


def serve(spec: str, host: str = "127.0.0.1", port: int = 8085, *, device: Optional[str] = None,
          dtype=None, limits: Limits = Limits(), echo: Callable[[str], None] = print) -> None:
    """Load the reward ``spec`` and serve it within ``limits`` until interrupted (Ctrl-C: a graceful stop)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise SteerError(f"steer serve-reward needs {e.name or 'fastapi'}: {INSTALL_HINT}") from None
    from steer.rewards.registry import load

    reward = load(spec, device=device, dtype=dtype)
    sock = listen(host, port)
    _log_to_stderr()  # the process is now the server's: its logging and PIL's settings are ours
    _pixels_checked_here()
    app = create_app(reward, spec=spec, device=device, limits=limits)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5,
                            http=one_line_protocol(), log_config=None)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if not is_loopback(sock):
        log.warning("%s is not a loopback address and the server has no authentication: anyone who can reach "
                    "port %d can use the reward; prefer --host 127.0.0.1 (or a trusted network)", host, bound)
    echo(f"serving reward {reward.name!r} at http://{shown}:{bound} (POST /score, GET /health); Ctrl-C stops")
    uvicorn.Server(config).run(sockets=[sock])


class OneLineFormatter(logging.Formatter):
    """``steer serve-reward: LEVEL: message`` on one line; an exception adds its type and first line, never
    a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        text = _one_line(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__}: {first_line(record.exc_info[1], 300)})"
        return f"steer serve-reward: {record.levelname}: {text}"


def _log_to_stderr() -> None:
    """The server's log (its own lines and uvicorn's) on stderr, one line per event, for the process
    ``steer serve-reward`` owns."""
    for name, level in ((log.name, logging.INFO), ("uvicorn", logging.WARNING)):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(OneLineFormatter())
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def _pixels_checked_here() -> None:
    """``wire`` checks every PNG's pixels from its header before PIL opens it, so PIL's own (lower,
    multi-line-warning) decompression-bomb check is off in the server's process."""
    import warnings

    from PIL import Image

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    Image.MAX_IMAGE_PIXELS = None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())

