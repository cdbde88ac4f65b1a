"""``HttpReward``: a reward scored by a ``steer serve-reward`` server, named ``http://HOST:PORT`` in a spec.

A reward whose dependencies conflict with the generator's runs in its own environment::

    steer serve-reward hps --port 8085                           # environment A
    steer generate --reward "http://127.0.0.1:8085" ...          # environment B
    steer generate --reward "clip=1,http://127.0.0.1:8085=0.5"   # inside a weighted sum

One request scores a whole batch (wire format: ``steer.rewards.wire``; raw float32 by default, so
exact, or 8-bit PNG with ``image_format="png"``). Scores over HTTP have no gradient, so the reward is
never ``differentiable``: ReNO, FK's gradient proposal and ``draft`` refuse it with their usual message.

Never a hang: every request has a connect timeout and a read timeout; connection errors and 5xx
answers are retried ``retries`` times with exponential backoff (``backoff``, 2·backoff, ...), so a
server that is down fails after at most ``(retries + 1) * connect_timeout + backoff * (2**retries - 1)``
seconds, and one that stops answering after ``read_timeout``. Failures are one-line
``RewardServerError`` messages naming the fix.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Optional, Sequence
from urllib.parse import urlsplit

import torch
from torch import Tensor

from steer.errors import SteerError
from steer.rewards.base import Reward

SCHEMES = ("http://", "https://")
READ_TIMEOUT_ENV = "STEER_REWARD_HTTP_TIMEOUT"


class RewardServerError(SteerError):
    """A reward server that is not reachable, fails, or answers something other than one score per image."""


def is_url(term: str) -> bool:
    """Whether a spec term names a served reward (``http://...`` or ``https://...``)."""
    return term.strip().lower().startswith(SCHEMES)


def normalize_url(url: str) -> str:
    """``http://HOST:PORT[/base]`` without a trailing slash, scheme and host lower-cased; else a SteerError."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise SteerError(f"reward URL {url!r} must look like http://HOST:PORT (a `steer serve-reward` server)")
    try:
        port = parts.port
    except ValueError:
        raise SteerError(f"reward URL {url!r} has a bad port; write http://HOST:PORT") from None
    if parts.query or parts.fragment:
        raise SteerError(f"reward URL {url!r} must not have a query or fragment; write http://HOST:PORT[/path]")
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


class HttpReward(Reward):
    """Scores through ``steer serve-reward`` at ``url`` (``http://HOST:PORT``). Never differentiable.

    ``image_format``: ``"tensor"`` (float32 safetensors, exact; default) or ``"png"`` (8-bit).
    ``connect_timeout`` / ``read_timeout``: seconds per request (the read timeout defaults to
    ``$STEER_REWARD_HTTP_TIMEOUT`` or 120). ``retries``: extra tries after a connection error or a 5xx
    answer, waiting ``backoff`` seconds and doubling. ``check``: ask ``/health`` now, so a server that
    is down is reported before any image is generated.
    """

    differentiable = False

    def __init__(self, url: str, *, image_format: str = "tensor", connect_timeout: float = 5.0,
                 read_timeout: Optional[float] = None, retries: int = 3, backoff: float = 0.25, check: bool = True):
        self.url = normalize_url(url)
        self.name = self.url
        if image_format not in ("tensor", "png"):
            raise SteerError(f"image_format must be 'tensor' (exact) or 'png' (8-bit), got {image_format!r}")
        self.image_format = image_format
        self.connect_timeout = _positive("connect_timeout", connect_timeout)
        self.read_timeout = _positive("read_timeout", _default_read_timeout() if read_timeout is None else read_timeout)
        if not isinstance(retries, int) or not 0 <= retries <= 10:
            raise SteerError(f"retries must be an integer in [0, 10], got {retries!r}")
        self.retries, self.backoff = retries, _positive("backoff", backoff, allow_zero=True)
        self.remote_name: Optional[str] = None  # the served reward's own name and spec, from /health
        self.remote_spec: Optional[str] = None
        self._session = None
        self._answered = False
        if check:
            self.health()

    # ---- the Reward protocol ----------------------------------------------------------------------

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        from steer.rewards import wire

        if self.image_format == "png":
            body, kind = wire.encode_png(images, prompts), wire.JSON
        else:
            body, kind = wire.encode_tensor(images, prompts), wire.SAFETENSORS
        data = self._request("POST", "/score", body=body, content_type=kind)
        return torch.tensor(self._scores(data, images.shape[0]), dtype=torch.float32, device=images.device)

    def health(self) -> dict:
        """The server's ``/health`` answer (reward name, differentiable, version); records ``remote_name``."""
        data = self._request("GET", "/health")
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise self._garbage(f"/health answered {_preview(data)} without a reward 'name'")
        self.remote_name = data["name"]
        self.remote_spec = data["spec"] if isinstance(data.get("spec"), str) else None
        return data

    def to(self, device=None, dtype=None) -> "HttpReward":
        """Nothing to move: the model lives in the server (scores come back on the images' device)."""
        return self

    def __repr__(self) -> str:
        return f"HttpReward({self.url!r}, image_format={self.image_format!r})"

    def __getstate__(self):  # a requests.Session does not pickle; a copy opens its own
        state = dict(self.__dict__)
        state["_session"] = None
        return state

    # ---- HTTP ------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None):
        """One JSON answer, retrying connection errors and 5xx answers with exponential backoff."""
        import requests

        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        started, failure = time.monotonic(), None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._http().request(method, self.url + path, data=body, headers=headers,
                                                timeout=(self.connect_timeout, self.read_timeout))
            except requests.exceptions.ReadTimeout:
                raise RewardServerError(
                    f"reward server {self.url} did not answer {path} within {self.read_timeout:g} s; check the "
                    f"server, or allow longer with ${READ_TIMEOUT_ENV}=SECONDS (read_timeout=)") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
                self._reset()  # a pooled connection to a dead server is useless
                failure = ("down", _reason(e))
                continue
            except requests.exceptions.RequestException as e:
                raise RewardServerError(f"reward server {self.url}: {type(e).__name__}: {_reason(e)}") from None
            if response.status_code >= 500:
                failure = ("5xx", f"HTTP {response.status_code}: {_detail(response)}")
                continue
            if response.status_code >= 400:
                raise RewardServerError(f"reward server {self.url} refused {path} (HTTP {response.status_code}): "
                                        f"{_detail(response)}")
            self._answered = True
            try:
                return response.json()
            except ValueError:
                raise self._garbage(f"{path} answered non-JSON {_preview(response.text)}") from None
        tries = f"{self.retries + 1} tries over {time.monotonic() - started:.1f} s"
        if failure[0] == "5xx":
            raise RewardServerError(f"reward server {self.url} failed on {path} ({failure[1]}; {tries}); see the "
                                    f"server's output")
        again = " any more (it answered before: did it stop?)" if self._answered else ""
        raise RewardServerError(f"reward server {self.url} is not reachable{again}: {failure[1]} ({tries}); "
                                f"start it with `steer serve-reward {self._spec()} --host {self._host()} "
                                f"--port {self._port()}`")

    def _scores(self, data, batch: int) -> list[float]:
        scores = data.get("scores") if isinstance(data, dict) else None
        if not isinstance(scores, list):
            raise self._garbage(f"/score answered {_preview(data)} without a list 'scores'")
        if len(scores) != batch:
            raise self._garbage(f"/score answered {len(scores)} scores for {batch} images")
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
            raise self._garbage(f"/score answered scores that are not all numbers: {_preview(scores)}")
        if not all(math.isfinite(s) for s in scores):
            raise self._garbage(f"/score answered non-finite scores {_preview(scores)}")
        return [float(s) for s in scores]

    def _garbage(self, what: str) -> RewardServerError:
        return RewardServerError(f"reward server {self.url} answered garbage: {what}; is it a `steer serve-reward` "
                                 f"server of the same steer version?")

    def _http(self):
        if self._session is None:
            import requests

            self._session = requests.Session()
            if self._host() in ("127.0.0.1", "localhost", "::1"):
                self._session.trust_env = False  # a loopback server is never behind the environment's proxy
        return self._session

    def _reset(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _spec(self) -> str:
        """The served spec as the command line needs it (``SPEC`` when the server never said)."""
        if not self.remote_spec:
            return "SPEC"
        import shlex

        return shlex.quote(self.remote_spec)

    def _host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    def _port(self) -> str:
        parts = urlsplit(self.url)
        return str(parts.port or (443 if parts.scheme == "https" else 80))


def _positive(name: str, value, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SteerError(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise SteerError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return value


def _default_read_timeout() -> float:
    text = os.environ.get(READ_TIMEOUT_ENV)
    if text is None or not text.strip():
        return 120.0
    try:
        return float(text)
    except ValueError:
        raise SteerError(f"${READ_TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None


def _reason(e: BaseException) -> str:
    """A short cause for a requests error (its own message nests several exceptions' reprs)."""
    text = str(e)
    errno = re.search(r"\[Errno -?\d+\] ([^'\"\)\]]+)", text)
    if errno:
        return errno.group(1).strip().lower()
    for marker, reason in (("RemoteDisconnected", "the server closed the connection without answering"),
                           ("Connection aborted", "the connection was aborted"),
                           ("ConnectTimeout", "connecting timed out"), ("timed out", "connecting timed out"),
                           ("IncompleteRead", "the answer was cut short"),
                           ("InvalidChunkLength", "the answer was cut short")):
        if marker in text or marker in type(e).__name__:
            return reason
    return " ".join(text.split())[:200] or type(e).__name__


def _detail(response) -> str:
    """The one-line message of an error answer (``{"error": ...}``, FastAPI's ``{"detail": ...}``, or text)."""
    try:
        data = response.json()
    except ValueError:
        data = response.text
    if isinstance(data, dict):
        data = data.get("error", data.get("detail", data))
    text = data if isinstance(data, str) else json.dumps(data)
    return " ".join(text.split())[:300] or response.reason or "no message"


def _preview(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return repr(text[:80] + ("..." if len(text) > 80 else ""))
