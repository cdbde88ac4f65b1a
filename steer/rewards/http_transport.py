"""The transport under ``HttpReward`` (``steer.rewards.remote``): the overall request deadline (a watchdog that
shuts the request's sockets down when it passes), its timeouts, and the one-line reading of what went wrong."""
from __future__ import annotations

import json
import math
import os
import re
import socket
import threading
import time
from typing import Optional

from steer.errors import SteerError

READ_TIMEOUT_ENV = "STEER_REWARD_HTTP_TIMEOUT"
LIMIT_KEYS = ("max_body_bytes", "max_images", "max_image_pixels", "max_batch_pixels")
watch = threading.local()  # the connections the current thread's request uses (for its deadline)

def positive_seconds(name: str, value, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SteerError(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise SteerError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return value


def default_read_timeout() -> float:
    text = os.environ.get(READ_TIMEOUT_ENV)
    if text is None or not text.strip():
        return 120.0
    try:
        return float(text)
    except ValueError:
        raise SteerError(f"${READ_TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None


class Late(Exception):
    """A request past its overall deadline."""


def shut_at(connections: list, deadline: float, done: threading.Event, fired: threading.Event) -> None:
    """At ``deadline`` (unless ``done`` first), set ``fired`` and shut down the sockets of ``connections``,
    again every 50 ms until ``done``: a blocked send or read then ends at once."""
    wait = deadline - time.monotonic()
    while not done.wait(max(wait, 0.0)):
        fired.set()
        for connection in list(connections):
            sock = getattr(connection, "sock", None)
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed
                pass
        wait = 0.05


def watched_adapter():
    """A requests adapter whose connections register with the requesting thread's deadline watchdog."""
    from requests.adapters import HTTPAdapter
    from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.connection import HTTPConnection, HTTPSConnection

    class Watched:
        def request(self, *args, **kwargs):
            connections = getattr(watch, "connections", None)
            if connections is not None:
                connections.append(self)
            return super().request(*args, **kwargs)

    class WatchedHTTP(Watched, HTTPConnection):
        pass

    class WatchedHTTPS(Watched, HTTPSConnection):
        pass

    class HTTPPool(HTTPConnectionPool):
        ConnectionCls = WatchedHTTP

    class HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = WatchedHTTPS

    pools = {"http": HTTPPool, "https": HTTPSPool}

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, *args, **kwargs):
            manager = super().proxy_manager_for(*args, **kwargs)
            manager.pool_classes_by_scheme = pools
            return manager

    return Adapter(max_retries=0)


def read_timed_out(e: BaseException) -> bool:
    """Whether a requests / urllib3 error is a read timing out (requests wraps one met mid-answer in a
    ConnectionError): the server is slow, not down."""
    import requests

    if isinstance(e, requests.exceptions.ReadTimeout) or isinstance(e, socket.timeout):
        return True
    text = f"{type(e).__name__}: {e}"
    return "ReadTimeoutError" in text or "Read timed out" in text or "read timeout" in text


def server_limits(data) -> Optional[dict]:
    """The ``limits`` of a ``/health`` answer if they are all positive integers; else None (not split)."""
    if not isinstance(data, dict):
        return None
    values = {key: data.get(key) for key in LIMIT_KEYS}
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values.values())
    return values if ok else None


def reason(e: BaseException) -> str:
    """A short cause for a requests error (its own message nests several exceptions' reprs)."""
    text = f"{type(e).__name__}: {e}"
    errno = re.search(r"\[Errno -?\d+\] ([^'\"\)\]]+)", text)
    if errno:
        return errno.group(1).strip().lower()
    for marker, reason in (("RemoteDisconnected", "the server closed the connection without answering"),
                           ("Connection aborted", "the connection was aborted"),
                           ("ConnectTimeout", "connecting timed out"), ("connect timeout", "connecting timed out"),
                           ("Read timed out", "reading the answer timed out"),
                           ("ReadTimeout", "reading the answer timed out"), ("timed out", "timed out"),
                           ("IncompleteRead", "the answer was cut short"),
                           ("InvalidChunkLength", "the answer was cut short")):
        if marker in text:
            return reason
    return " ".join(str(e).split())[:200] or type(e).__name__


def error_detail(content: bytes) -> str:
    """The one-line message of an error answer (``{"error": ...}``, FastAPI's ``{"detail": ...}``, or text)."""
    text = content.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = text
    if isinstance(data, dict):
        data = data.get("error", data.get("detail", data))
    text = data if isinstance(data, str) else json.dumps(data)
    return " ".join(text.split())[:300] or "no message"


def preview(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return repr(text[:80] + ("..." if len(text) > 80 else ""))

