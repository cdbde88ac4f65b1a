"""``HttpReward``: a reward scored by a ``steer serve-reward`` server, named ``http://HOST:PORT`` in a spec.

A reward whose dependencies conflict with the generator's runs in its own environment::

    steer serve-reward hps --port 8085                           # environment A
    steer generate --reward "http://127.0.0.1:8085" ...          # environment B
    steer generate --reward "clip=1,http://127.0.0.1:8085=0.5"   # inside a weighted sum

One request scores a whole batch (wire format: ``steer.rewards.wire``; raw float32 by default, so
exact, or 8-bit PNG with ``image_format="png"``). Scores over HTTP have no gradient, so the reward is
never ``differentiable``: ReNO, FK's gradient proposal and ``draft`` refuse it with their usual message.

Never a hang: every request has a connect timeout and an overall deadline (``read_timeout``, from
the first byte sent to the answer's last, so a server that answers one byte at a time is cut off too);
connection errors, 5xx, 408 and 429 answers are retried ``retries`` times with exponential backoff
(``backoff``, 2·backoff, ...), so a server that is down fails after at most
``(retries + 1) * connect_timeout + backoff * (2**retries - 1)`` seconds, and one that stops answering
after ``read_timeout`` (not retried). Any other 4xx is the batch's fault and is not retried. Redirects
are not followed (the batch goes to the named server or nowhere): a 3xx is an error naming its
Location. Answers over 16 MiB are garbage. A batch is split to fit the server's limits (from its
``/health``), and an image over its per-image limit is refused here, before anything is sent.
Failures are one-line ``RewardServerError`` messages naming the fix.
"""
from __future__ import annotations

import json
import math
import threading
import time
from typing import Optional, Sequence
from urllib.parse import urlsplit

import torch
from torch import Tensor

from steer.errors import SteerError
from steer.rewards.base import Reward
from steer.rewards.http_transport import (READ_TIMEOUT_ENV, Late, default_read_timeout, error_detail,
                                          positive_seconds, preview, read_timed_out, reason, server_limits, shut_at,
                                          watch, watched_adapter)
from steer.rewards.reward_url import normalize_url

MAX_ANSWER_BYTES = 16 << 20
RETRIED_4XX = (408, 429)  # a request timeout, too many requests: may pass a moment later


class RewardServerError(SteerError):
    """A reward server that is not reachable, fails, or answers something other than one score per image."""


class HttpReward(Reward):
    """Scores through ``steer serve-reward`` at ``url`` (``http://HOST:PORT``). Never differentiable.

    ``image_format``: ``"tensor"`` (float32 safetensors, exact; default) or ``"png"`` (8-bit).
    ``connect_timeout``: seconds to connect; ``read_timeout``: the overall deadline of one request, from
    sending to the answer's last byte (default ``$STEER_REWARD_HTTP_TIMEOUT`` or 120). ``retries``: extra
    tries after a connection error or a 5xx / 408 / 429 answer, waiting ``backoff`` seconds and doubling. ``check``: ask ``/health`` now, so a server that
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
        self.connect_timeout = positive_seconds("connect_timeout", connect_timeout)
        self.read_timeout = positive_seconds("read_timeout", default_read_timeout() if read_timeout is None else read_timeout)
        if not isinstance(retries, int) or not 0 <= retries <= 10:
            raise SteerError(f"retries must be an integer in [0, 10], got {retries!r}")
        self.retries, self.backoff = retries, positive_seconds("backoff", backoff, allow_zero=True)
        self.remote_name: Optional[str] = None  # the served reward's own name and spec, from /health
        self.remote_spec: Optional[str] = None
        self.remote_limits: Optional[dict] = None  # the server's wire.Limits, which batches are split by
        self._session = None
        self._answered = False
        if check:
            self.health()

    # ---- the Reward protocol ----------------------------------------------------------------------

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        prompts = list(prompts)
        scores = []
        for start, stop in self._chunks(images, prompts):
            scores += self._score(images[start:stop], prompts[start:stop])
        return torch.tensor(scores, dtype=torch.float32, device=images.device)

    def _score(self, images: Tensor, prompts: list) -> list[float]:
        from steer.rewards import wire

        if self.image_format == "png":
            body, kind = wire.encode_png(images, prompts), wire.JSON
        else:
            body, kind = wire.encode_tensor(images, prompts), wire.SAFETENSORS
        return self._scores(self._request("POST", "/score", body=body, content_type=kind), images.shape[0])

    def _chunks(self, images: Tensor, prompts: list) -> list[tuple[int, int]]:
        """[start, stop) slices of the batch that fit the server's limits (one slice when it never said)."""
        batch = images.shape[0]
        if not self.remote_limits or images.ndim != 4:
            return [(0, batch)]
        limits, (height, width) = self.remote_limits, images.shape[2:]
        pixels = height * width
        if pixels > limits["max_image_pixels"]:
            raise RewardServerError(f"reward server {self.url} takes at most {limits['max_image_pixels']} pixels per "
                                    f"image and these are {height} x {width} = {pixels}; restart it with "
                                    f"--max-image-pixels {pixels}, or score smaller images")
        per_image = 12 * pixels if self.image_format == "tensor" else 4 * (3 * pixels + height + 1024) // 3 + 8
        room = limits["max_body_bytes"] - len(json.dumps(prompts)) - 65536
        size = min(limits["max_images"], limits["max_batch_pixels"] // pixels, max(room, 0) // per_image)
        if size < 1:
            raise RewardServerError(f"reward server {self.url} takes at most {limits['max_body_bytes']} bytes per "
                                    f"request, less than one {height} x {width} image; restart it with a larger "
                                    f"--max-body-mb")
        return [(start, min(start + size, batch)) for start in range(0, batch, size)]

    def health(self) -> dict:
        """The server's ``/health`` answer (reward name, differentiable, version, limits); records ``remote_name``."""
        data = self._request("GET", "/health")
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise self._garbage(f"/health answered {preview(data)} without a reward 'name'")
        self.remote_name = data["name"]
        self.remote_spec = data["spec"] if isinstance(data.get("spec"), str) else None
        self.remote_limits = server_limits(data.get("limits"))
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
        """One JSON answer, retrying connection errors and 5xx / 408 / 429 answers with exponential backoff."""
        import http.client

        import requests
        import urllib3

        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        if content_type:
            headers["Content-Type"] = content_type
        started, failure = time.monotonic(), None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            deadline = time.monotonic() + self.read_timeout
            try:
                status, location, content = self._exchange(method, path, body, headers, deadline)
            except RewardServerError:
                self._reset()
                raise
            except Late:
                self._reset()
                raise RewardServerError(
                    f"reward server {self.url} did not answer {path} within {self.read_timeout:g} s; check the "
                    f"server, or allow longer with ${READ_TIMEOUT_ENV}=SECONDS (read_timeout=)") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
                self._reset()  # a pooled connection to a dead server is useless
                failure = ("down", reason(e))
                continue
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                    OSError, ValueError) as e:  # anything else a hostile answer can make requests raise
                self._reset()
                raise RewardServerError(f"reward server {self.url} failed on {path}: {type(e).__name__}: "
                                        f"{reason(e)}") from None
            if 300 <= status < 400:
                raise RewardServerError(f"reward server {self.url} redirected {path} (HTTP {status}) to "
                                        f"{preview(location or 'nowhere')}; not followed, so the batch goes nowhere "
                                        f"else: name the server you mean in the reward URL") from None
            if status >= 500 or status in RETRIED_4XX:
                failure = ("5xx", f"HTTP {status}: {error_detail(content)}")
                continue
            if status >= 400:  # the batch's own fault: the same request would fail again
                raise RewardServerError(f"reward server {self.url} refused {path} (HTTP {status}): {error_detail(content)}")
            self._answered = True
            try:
                return json.loads(content)
            except (ValueError, RecursionError):
                raise self._garbage(f"{path} answered non-JSON {preview(content.decode('utf-8', 'replace'))}") \
                    from None
        tries = f"{self.retries + 1} tries over {time.monotonic() - started:.1f} s"
        if failure[0] == "5xx":
            raise RewardServerError(f"reward server {self.url} failed on {path} ({failure[1]}; {tries}); see the "
                                    f"server's output")
        again = " any more (it answered before: did it stop?)" if self._answered else ""
        raise RewardServerError(f"reward server {self.url} is not reachable{again}: {failure[1]} ({tries}); "
                                f"start it with `steer serve-reward {self._spec()} --host {self._host()} "
                                f"--port {self._port()}`")

    def _exchange(self, method: str, path: str, body, headers: dict, deadline: float) -> tuple[int, str, bytes]:
        """(status, Location, body) of one request, all of it by ``deadline`` (else ``Late``): a watchdog
        shuts the request's sockets down at the deadline, so no read can outlive it."""
        import requests

        connections, done, fired = [], threading.Event(), threading.Event()
        watchdog = threading.Thread(target=shut_at, args=(connections, deadline, done, fired), daemon=True)
        watch.connections = connections
        watchdog.start()
        try:
            response = self._http().request(method, self.url + path, data=body, headers=headers, stream=True,
                                            allow_redirects=False, timeout=(self.connect_timeout, self.read_timeout))
            with response:
                content = bytearray()
                for chunk in response.iter_content(65536):
                    content += chunk
                    if len(content) > MAX_ANSWER_BYTES:
                        raise self._garbage(f"{path} answered more than {MAX_ANSWER_BYTES >> 20} MiB")
                    if time.monotonic() > deadline:
                        raise Late
            if fired.is_set():  # cut off mid-head, http.client may have parsed what it had
                raise Late
            return response.status_code, response.headers.get("location", ""), bytes(content)
        except requests.exceptions.ConnectTimeout:
            raise
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.Timeout, OSError) as e:
            if fired.is_set() or time.monotonic() >= deadline or read_timed_out(e):
                raise Late from None
            raise
        finally:
            done.set()
            watch.connections = None

    def _scores(self, data, batch: int) -> list[float]:
        scores = data.get("scores") if isinstance(data, dict) else None
        if not isinstance(scores, list):
            raise self._garbage(f"/score answered {preview(data)} without a list 'scores'")
        if len(scores) != batch:
            raise self._garbage(f"/score answered {len(scores)} scores for {batch} images")
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
            raise self._garbage(f"/score answered scores that are not all numbers: {preview(scores)}")
        if not all(math.isfinite(s) for s in scores):
            raise self._garbage(f"/score answered non-finite scores {preview(scores)}")
        return [float(s) for s in scores]

    def _garbage(self, what: str) -> RewardServerError:
        return RewardServerError(f"reward server {self.url} answered garbage: {what}; is it a `steer serve-reward` "
                                 f"server of the same steer version?")

    def _http(self):
        if self._session is None:
            import requests

            self._session = requests.Session()
            adapter = watched_adapter()
            self._session.mount("http://", adapter)
            self._session.mount("https://", adapter)
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
