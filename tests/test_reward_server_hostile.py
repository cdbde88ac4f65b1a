"""Hostile input to ``steer serve-reward`` and hostile servers to ``HttpReward`` (issue 29, items 2-4):
decompression bombs and batches over the caps are a 413 before anything is decoded, every bad request
is a 4xx of one JSON line and at most one log line (fuzzed), and the client has an overall deadline,
follows no redirect, retries no deterministic 4xx and accepts only well-formed URLs (fuzzed)."""
import base64
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib

import pytest
import requests
import torch

from steer.errors import SteerError
from steer.rewards import wire
from steer.rewards.remote import HttpReward, RewardServerError, normalize_url
from tests import rewards_for_tests as local
from tests.test_reward_server import ROOT, Server, free_port

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.usefixtures("one_thread")

CAPS = ["--max-images", "8", "--max-image-pixels", "65536", "--max-batch-pixels", "131072", "--max-body-mb", "4"]
FAST = dict(retries=1, backoff=0.05, check=False)


def sleepy_or_wrong(images, prompts):
    """Brightness; a prompt 'sleep' sleeps 3 s first, 'crash' raises, 'short' returns one score too few."""
    if "crash" in prompts:
        raise RuntimeError("the model crashed\non two lines")
    if "sleep" in prompts:
        time.sleep(3)
    scores = local.brightness(images, prompts)
    return scores[1:] if "short" in prompts else scores


def png(width: int, height: int) -> bytes:
    """A 1-bit grey PNG whose IHDR says ``width`` x ``height``; all-zero rows compress ~1000:1 (a bomb:
    9400 x 9400 is 11 KB). Sizes over 10^8 pixels carry no pixel data (the header is the attack)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"\0" * ((1 + (width + 7) // 8) * height) if width * height <= 10 ** 8 else b""
    return (wire.PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def png_body(*files: bytes, prompts=None) -> bytes:
    images = [base64.b64encode(f).decode() for f in files]
    return json.dumps({"prompts": prompts or ["x"] * len(files), "images": images}).encode()


def safetensors(shape, dtype="F32", offsets=None, data=b"", prompts=None, extra=None) -> bytes:
    """A safetensors body whose header declares ``shape`` (``data`` is what actually follows it)."""
    header = {"images": {"dtype": dtype, "shape": shape, "data_offsets": offsets or [0, len(data)]},
              "__metadata__": {"prompts": json.dumps(prompts or ["x"])}, **(extra or {})}
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


class CappedServer(Server):
    """``python -m steer serve-reward SPEC FLAGS`` (default: ``sleepy_or_wrong`` with the small ``CAPS``)."""

    disconnects = crashes = 0  # what the module's server is expected to have logged

    def __init__(self, spec: str = "tests.test_reward_server_hostile:sleepy_or_wrong", *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        flags = [*(flags or CAPS), "--port", str(self.port)]
        self.proc = subprocess.Popen([sys.executable, "-m", "steer", "serve-reward", spec, *flags], cwd=ROOT,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.proc.communicate()}")
            try:
                if requests.get(self.url + "/health", timeout=1).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        self.proc.kill()
        raise AssertionError(f"server {self.url} did not answer /health within 60 s")


@pytest.fixture(scope="module")
def server():
    srv = CappedServer()
    yield srv
    code, out, err = srv.stop(signal.SIGINT)
    assert code in (0, 130) and "Traceback" not in err, err
    assert "DecompressionBomb" not in err and "no authentication" not in err, err  # loopback: no warning
    logged = [line for line in err.splitlines() if line.strip() and line.strip() != "stopped serving"]
    assert all(line.startswith("steer serve-reward: ") for line in logged), err
    disconnects = [line for line in logged if "disconnected" in line]
    assert len(disconnects) == CappedServer.disconnects, err  # one line per client that left mid-body
    assert sum("the model crashed" in line for line in logged) == CappedServer.crashes, err


def post(srv, body: bytes, kind: str = wire.JSON, timeout: float = 10):
    return requests.post(srv.url + "/score", data=body, headers={"Content-Type": kind}, timeout=timeout)


def assert_one_line_error(r, status=None):
    assert r.headers["content-type"] == "application/json", (r.status_code, r.text)
    assert "\n" not in r.text.strip() and isinstance(r.json()["error"], str), r.text
    assert "\n" not in r.json()["error"]
    if status is not None:
        assert r.status_code == status, r.text
    return r.json()["error"]


# ---- item 2: caps checked before decoding, off the event loop ---------------------------------------

@pytest.mark.parametrize("width,height", [(9400, 9400), (10000, 10000), (1, 100000), (300, 300),
                                          (2 ** 31 - 1, 2 ** 31 - 1)])
def test_a_png_bomb_is_a_413_without_decoding(server, width, height):
    bomb = png(width, height)
    assert len(bomb) < 20_000
    start = time.monotonic()
    r = post(server, png_body(bomb))
    assert "65536 pixels per image" in assert_one_line_error(r, 413)
    assert time.monotonic() - start < 2
    assert requests.get(server.url + "/health", timeout=2).ok


def test_default_limits_refuse_the_issue_bomb_in_process_without_warnings():
    bomb = png_body(png(9400, 9400), png(10000, 10000))
    start = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would fail here
        with pytest.raises(wire.WireError) as err:
            wire.decode(bomb, wire.JSON)
    assert err.value.status == 413 and "pixels per image" in str(err.value) and time.monotonic() - start < 1


@pytest.mark.parametrize("count,side,says", [(9, 8, "9 images, over the server's limit of 8"),
                                             (3, 256, "3 x 256 x 256 = 196608 pixels, over the server's limit")])
def test_too_many_images_or_pixels_in_one_batch_are_a_413(server, count, side, says):
    r = post(server, png_body(*[png(side, side)] * count))
    assert says in assert_one_line_error(r, 413)
    tensor = wire.encode_tensor(torch.zeros(count, 3, side, side), ["x"] * count)
    assert says in assert_one_line_error(post(server, tensor, wire.SAFETENSORS), 413)


@pytest.mark.parametrize("shape,offsets,status,says", [
    ([1, 3, 100000, 100000], [0, 12 * 10 ** 10], 413, "pixels per image"),
    ([10 ** 6, 3, 1, 1], None, 413, "1000000 images"),
    ([2 ** 40, 3, 2 ** 40, 2 ** 40], None, 413, "images"),
    ([1, 3, 8, 8], [0, 768], 400, "do not match"),  # declares 768 bytes, carries none
    ([1, 3, -8, 8], None, 400, "must be (B, 3, H, W)"),
    ([1, 4, 8, 8], None, 400, "B, H, W"),
    ([1, 3, 8], None, 400, "must be (B, 3, H, W)"),
    ([1, 3, 8, "8"], None, 400, "must be (B, 3, H, W)"),
])
def test_tensor_bodies_are_checked_from_their_declared_shape(server, shape, offsets, status, says):
    r = post(server, safetensors(shape, offsets=offsets), wire.SAFETENSORS)
    assert says in assert_one_line_error(r, status)


def test_tensor_headers_that_lie_are_400s(server):
    for body, says in [(b"\xff" * 8 + b"{}", "a header of"), (b"\x02\0\0\0\0\0\0\0[]", "not a JSON object"),
                       (safetensors([1, 3, 2, 2], dtype="I64", data=bytes(96)), "float tensor"),
                       (safetensors([1, 3, 2, 2], data=bytes(48), extra={"other": {}}), "exactly one tensor"),
                       (len(nested(100000)).to_bytes(8, "little") + nested(100000), "nested too deeply")]:
        assert says in assert_one_line_error(post(server, body, wire.SAFETENSORS), 400)


def test_the_body_cap_is_a_413_declared_or_streamed(server):
    big = b"x" * (5 << 20)
    assert "over the server's limit of 4194304" in assert_one_line_error(post(server, big), 413)

    def chunks():
        for _ in range(5):
            yield b"x" * (1 << 20)

    r = requests.post(server.url + "/score", data=chunks(), headers={"Content-Type": wire.JSON}, timeout=10)
    assert "over the server's limit" in assert_one_line_error(r, 413)


def test_health_answers_while_fifty_requests_queue_for_a_slow_reward(server):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    body = wire.encode_tensor(images, ["x", "y"])
    answers = []

    def one(k):
        prompts = ["sleep", "y"] if k == 0 else ["x", "y"]
        answers.append(post(server, wire.encode_tensor(images, prompts) if k == 0 else body, wire.SAFETENSORS, 60))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(50)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    start = time.monotonic()
    assert requests.get(server.url + "/health", timeout=5).ok
    assert time.monotonic() - start < 2  # not behind the 3 s reward call nor the threads queued after it
    for t in threads:
        t.join(60)
    assert len(answers) == 50 and all(r.status_code == 200 for r in answers), {r.status_code for r in answers}
    expected = local.brightness(images, ["x", "y"]).tolist()
    assert all(r.json()["scores"] == expected for r in answers)


# ---- item 3: every bad request is a 4xx of one JSON line; at most one log line ----------------------

def test_images_of_different_sizes_are_a_400(server):
    r = post(server, png_body(png(8, 8), png(16, 8)))
    assert "image 1 is 8 x 16 but image 0 is 8 x 8" in assert_one_line_error(r, 400)


@pytest.mark.parametrize("body", [nested(100000), b'{"images": ' + nested(50000) + b', "prompts": []}',
                                  b'{"a":' * 100000 + b"1" + b"}" * 100000])
def test_deeply_nested_json_is_a_400(server, body):
    assert "nested too deeply" in assert_one_line_error(post(server, body), 400)


@pytest.mark.parametrize("body,says", [
    (png_body(b"GIF89a" + bytes(40)), "not a PNG"), (png_body(png(8, 8)[:30]), "not a readable PNG"),
    (png_body(png(0, 8)), "0 x 8"), (json.dumps({"prompts": ["x"], "images": [3]}).encode(), "not a base64"),
    (png_body(png(8, 8), prompts=[1]), "list of strings"), (b"\xff\xfe", "not JSON"),
])
def test_malformed_png_batches_are_400s(server, body, says):
    assert says in assert_one_line_error(post(server, body), 400)


def test_a_client_that_leaves_mid_body_is_one_log_line(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n" + b"{" * 1000)
        time.sleep(0.2)
    CappedServer.disconnects += 1
    time.sleep(0.3)
    assert requests.get(server.url + "/health", timeout=2).ok  # counted in the fixture's teardown


def test_a_request_that_is_not_http_is_a_json_400(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.settimeout(5)
        s.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head, answer
    assert "not an HTTP/1.1 request" in json.loads(body)["error"]


def test_a_failing_reward_is_a_500_of_one_line_and_one_log_line(server):
    images = torch.rand(2, 3, 8, 8)
    r = post(server, wire.encode_tensor(images, ["crash", "x"]), wire.SAFETENSORS)
    assert "raised RuntimeError: the model crashed" in assert_one_line_error(r, 500)
    CappedServer.crashes += 1
    r = post(server, wire.encode_tensor(images, ["short", "x"]), wire.SAFETENSORS)  # the Reward's own check: 422
    assert "returned 1 scores for 2 images" in assert_one_line_error(r) and r.status_code in (422, 500)


def _mutations(rng: random.Random, valid: bytes):
    """Random damage to a valid body: flipped bytes, cuts, splices, repeats."""
    data = bytearray(valid)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        data = data[:rng.randrange(len(data))]
    elif kind == 2:
        at = rng.randrange(len(data))
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == 3:
        data = data[rng.randrange(len(data)):] + data[:rng.randrange(len(data))]
    else:
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
    return bytes(data)


def _valid_bodies():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    return [(wire.encode_tensor(images, ["a", "b"]), wire.SAFETENSORS), (wire.encode_png(images, ["a", "b"]), wire.JSON)]


def test_fuzzed_bodies_only_ever_raise_one_line_wire_errors():
    rng = random.Random(29)
    limits = wire.Limits(max_image_pixels=65536, max_batch_pixels=131072, max_images=8)
    for valid, kind in _valid_bodies():
        for _ in range(600):
            body = _mutations(rng, valid)
            try:
                images, prompts = wire.decode(body, kind, limits)
            except wire.WireError as e:
                assert e.status in (400, 413, 415) and "\n" not in str(e) and str(e), (body[:80], e)
            else:
                assert images.ndim == 4 and images.shape[0] == len(prompts) and torch.isfinite(images).all()


def test_fuzzed_bodies_over_http_are_never_a_500_nor_text(server):
    rng = random.Random(3)
    for valid, kind in _valid_bodies():
        for _ in range(60):
            r = post(server, _mutations(rng, valid), rng.choice([kind, kind, "text/plain", ""]))
            if r.status_code != 200:
                assert 400 <= r.status_code < 500, r.text
                assert_one_line_error(r)


def test_cap_flags_must_be_positive():
    from typer.testing import CliRunner

    from steer.cli import app

    r = CliRunner().invoke(app, ["serve-reward", "jpeg", "--port", "0", "--max-image-pixels", "0"])
    assert r.exit_code == 2 and "--max-image-pixels must be a positive integer" in r.output


def test_a_non_loopback_address_is_warned_about():
    srv = CappedServer("tests.rewards_for_tests:brightness", "--host", "0.0.0.0")
    code, out, err = srv.stop(signal.SIGINT)
    assert "not a loopback address and the server has no authentication" in err, err
    assert len([line for line in err.splitlines() if "authentication" in line]) == 1


# ---- item 4: the client: a deadline, no redirects, no retried 4xx, clear failures -------------------

class Raw:
    """A loopback TCP server whose every connection runs ``handle(conn, request_head)`` in a thread."""

    def __init__(self, handle):
        self.handle, self.hits = handle, 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        with conn:
            try:
                conn.settimeout(30)
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                    head += chunk
                self.handle(conn, head)
            except OSError:
                pass

    def close(self):
        self.sock.close()


def answer(status: int, body: bytes = b'{"scores": [1.0, 2.0]}', extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, len(body), extra, body))


def read_body(conn, head: bytes) -> None:
    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length")), b"0"))
    got = len(head.partition(b"\r\n\r\n")[2])
    while got < length and (chunk := conn.recv(1 << 20)):
        got += len(chunk)


@pytest.fixture()
def raw():
    servers = []

    def make(handle):
        servers.append(Raw(handle))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def images2():
    return torch.rand(2, 3, 8, 8)


@pytest.mark.parametrize("where", ["head", "body"])
def test_a_server_answering_one_byte_at_a_time_hits_the_deadline(raw, where):
    def trickle(conn, head):
        read_body(conn, head)
        data = answer(200, b'{"scores": [1.0, 2.0]}' + b" " * 1000)
        fast = 0 if where == "head" else data.index(b"\r\n\r\n") + 4
        conn.sendall(data[:fast])
        for byte in data[fast:]:
            conn.sendall(bytes([byte]))
            time.sleep(0.05)  # each byte well within any per-read timeout

    srv = raw(trickle)
    start = time.monotonic()
    with pytest.raises(RewardServerError) as err:
        HttpReward(srv.url, read_timeout=1, **FAST)(images2(), ["a", "b"])
    assert time.monotonic() - start < 2.5
    message = str(err.value)
    assert "did not answer /score within 1 s" in message and "connecting" not in message and "\n" not in message
    assert srv.hits == 1  # a deadline is not retried


@pytest.mark.parametrize("stall", ["silent", "mid-body"])
def test_a_read_timeout_is_not_reported_as_connecting(raw, stall):
    def hang(conn, head):
        read_body(conn, head)
        if stall == "mid-body":
            conn.sendall(answer(200)[:-5])
        time.sleep(3)

    srv = raw(hang)
    with pytest.raises(RewardServerError) as err:
        HttpReward(srv.url, read_timeout=0.5, **FAST)(images2(), ["a", "b"])
    assert "did not answer /score within 0.5 s" in str(err.value) and "connecting" not in str(err.value)


def test_a_server_that_never_reads_the_batch_hits_the_deadline(raw):
    srv = raw(lambda conn, head: time.sleep(5))  # reads only the head: the upload blocks
    start = time.monotonic()
    with pytest.raises(RewardServerError, match="did not answer /score within 1 s"):
        HttpReward(srv.url, read_timeout=1, **FAST)(torch.rand(1, 3, 1200, 1200), ["a"])
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed(raw, status):
    elsewhere = raw(lambda conn, head: conn.sendall(answer(200)))
    srv = raw(lambda conn, head: (read_body(conn, head), conn.sendall(
        answer(status, b"", b"Location: %s/score\r\n" % elsewhere.url.encode()))))
    with pytest.raises(RewardServerError) as err:
        HttpReward(srv.url, **FAST)(images2(), ["a", "b"])
    message = str(err.value)
    assert f"redirected /score (HTTP {status}) to '{elsewhere.url}/score'" in message and "not followed" in message
    assert elsewhere.hits == 0 and srv.hits == 1
    with pytest.raises(RewardServerError, match="redirected /health"):
        HttpReward(srv.url, retries=0)


@pytest.mark.parametrize("status,retried", [(400, False), (404, False), (413, False), (415, False), (422, False),
                                            (408, True), (429, True), (500, True), (503, True)])
def test_only_transient_errors_are_retried(raw, status, retried):
    srv = raw(lambda conn, head: (read_body(conn, head), conn.sendall(answer(status, b'{"error": "no"}'))))
    with pytest.raises(RewardServerError) as err:
        HttpReward(srv.url, retries=2, backoff=0.01, check=False)(images2(), ["a", "b"])
    assert srv.hits == (3 if retried else 1) and f"HTTP {status}" in str(err.value)


@pytest.mark.parametrize("body,says", [(b"[" * 100000 + b"]" * 100000, "non-JSON"),
                                       (b'{"scores": [' + b"1.0, " * (4 << 20) + b"1.0]}", "more than 16 MiB")])
def test_hostile_answers_are_one_line_garbage(raw, body, says):
    srv = raw(lambda conn, head: (read_body(conn, head), conn.sendall(answer(200, body))))
    with pytest.raises(RewardServerError) as err:
        HttpReward(srv.url, **FAST)(images2(), ["a", "b"])
    assert "answered garbage" in str(err.value) and says in str(err.value) and "\n" not in str(err.value)


def test_batches_are_split_to_the_server_limits_and_oversized_images_refused_here(server):
    reward = HttpReward(server.url)
    assert reward.remote_limits == {"max_body_bytes": 4 << 20, "max_images": 8, "max_image_pixels": 65536,
                                    "max_batch_pixels": 131072}
    images = torch.rand(20, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    prompts = [f"p{k}" for k in range(20)]
    torch.testing.assert_close(reward(images, prompts), local.brightness(images, prompts))
    png = HttpReward(server.url, image_format="png")
    torch.testing.assert_close(png(images, prompts), local.brightness(images, prompts), atol=1 / 255, rtol=0)
    with pytest.raises(RewardServerError, match="at most 65536 pixels per image.*--max-image-pixels 262144"):
        reward(torch.rand(1, 3, 512, 512), ["a"])


# ---- URLs: one clear line for every malformed one (fuzzed) ------------------------------------------

@pytest.mark.parametrize("url,says", [
    ("http://[::1", "malformed"), ("http://[::1]:80:90", "bad port"), ("http://host:0", "bad port"),
    ("http://host:", "bad port"), ("http://ex ample:80", "spaces"), ("http://h\u00e9:80", "printable ASCII"),
    ("http://user:pw@127.0.0.1:80", "user or password"), ("http://[zz]:80", "malformed"), ("http://[::1%25eth0]:80", "bad IPv6"),
    ("http://a..b:80", "bad host"), ("http://-a:80", "bad host"), ("http://127.0.0.1:80/x?y", "query"),
    ("ftp://127.0.0.1:80", "must look like"), ("http://:80", "must look like"),
])
def test_malformed_urls_are_one_clear_line(url, says):
    with pytest.raises(SteerError) as err:
        normalize_url(url)
    assert says in str(err.value) and "\n" not in str(err.value) and "http://HOST:PORT" in str(err.value)
    from steer.rewards import load

    with pytest.raises(ValueError):
        load(url)


def test_fuzzed_urls_normalize_or_fail_in_one_line():
    rng = random.Random(29)
    alphabet = "ab1:/[]@?#%.-_ \t\n\x00é=,9fF"
    pieces = ["http://", "https://", "127.0.0.1", "[::1]", "[::1", "localhost", ":8085", ":99999", ":", "/",
              "@", "?", "#", "%zz", "..", "[", "]"]
    for _ in range(3000):
        url = "".join(rng.choice(pieces) if rng.random() < 0.5 else rng.choice(alphabet)
                      for _ in range(rng.randint(1, 8)))
        url = rng.choice(["http://", "https://", ""]) + url
        try:
            normalized = normalize_url(url)
        except SteerError as e:
            assert "\n" not in str(e) and str(e), url
            continue
        assert normalize_url(normalized) == normalized, url  # idempotent
        requests.Request("GET", normalized + "/health").prepare()  # requests takes it as is


def test_the_readme_documents_every_cap_flag_with_its_default():
    from pathlib import Path

    readme = (Path(ROOT) / "README.md").read_text()
    limits = wire.Limits()
    for flag, default in (("--max-body-mb", limits.max_body_bytes >> 20), ("--max-images", limits.max_images),
                          ("--max-image-pixels", limits.max_image_pixels),
                          ("--max-batch-pixels", limits.max_batch_pixels)):
        assert f"| `{flag}` | {default}" in readme, flag


@pytest.mark.parametrize("fault", [RuntimeError("boom\n  at line 2"), KeyError("k"), MemoryError()])
def test_the_catch_all_turns_any_escaping_exception_into_one_json_line(fault, caplog, monkeypatch):
    import asyncio
    import logging

    monkeypatch.setattr(logging.getLogger("steer.rewards.server"), "propagate", True)  # to caplog

    from steer.rewards.server import OneLineErrors

    async def app(scope, receive, send):
        raise fault

    sent = []

    async def send(message):
        sent.append(message)

    with caplog.at_level("INFO", logger="steer.rewards.server"):
        asyncio.run(OneLineErrors(app)({"type": "http", "method": "POST", "path": "/score"}, None, send))
    assert sent[0]["status"] == 500 and ("content-type", "application/json") in [
        (k.decode(), v.decode()) for k, v in sent[0]["headers"]]
    error = json.loads(sent[1]["body"])["error"]
    assert f"the server failed on POST /score: {type(fault).__name__}" in error and "\n" not in error
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()


def test_the_catch_all_sends_nothing_more_once_an_answer_started_and_a_disconnect_is_one_line(caplog, monkeypatch):
    import asyncio
    import logging

    monkeypatch.setattr(logging.getLogger("steer.rewards.server"), "propagate", True)  # to caplog

    from starlette.requests import ClientDisconnect

    from steer.rewards.server import OneLineErrors

    async def half(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-answer")

    async def gone(scope, receive, send):
        raise ClientDisconnect()

    for app, says in ((half, "mid-answer"), (gone, "disconnected")):
        sent = []

        async def send(message):
            sent.append(message)

        caplog.clear()
        with caplog.at_level("INFO", logger="steer.rewards.server"):
            asyncio.run(OneLineErrors(app)({"type": "http", "method": "POST", "path": "/score"}, None, send))
        assert len(sent) == (1 if app is half else 0)
        assert len(caplog.records) == 1 and says in caplog.records[0].getMessage()
