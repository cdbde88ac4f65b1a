"""Rewards served over HTTP: ``steer serve-reward`` in a real subprocess on loopback, scored through the
``http://HOST:PORT`` spec (``HttpReward``); dead, dying and garbage-answering servers fail in one line,
in bounded time."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import torch

import steer
import steer.rewards
from steer.errors import SteerError
from steer.rewards import WeightedSum, load, wire
from steer.rewards.remote import HttpReward, RewardServerError
from tests import rewards_for_tests as local

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "a blue square"]
FAST = dict(retries=1, backoff=0.05)  # failing tests need not wait for the default backoff
pytestmark = pytest.mark.usefixtures("one_thread")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m steer serve-reward SPEC --port N`` as a subprocess, up once ``/health`` answers."""

    def __init__(self, spec: str, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "steer", "serve-reward", spec, "--port", str(self.port)], cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1", **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
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

    def stop(self, sig=signal.SIGINT):
        """Send ``sig``; (return code, stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("the server did not stop within 15 s of the signal")
        return self.proc.returncode, out, err


@pytest.fixture(scope="module")
def server():
    srv = Server("tests.rewards_for_tests:brightness_or_fault")
    yield srv
    code, out, err = srv.stop(signal.SIGINT)  # Ctrl-C: a clean stop, one line, no traceback
    assert code in (0, 130), (code, err)
    assert f"at http://127.0.0.1:{srv.port}" in out and len(out.strip().splitlines()) == 1, out
    assert "Traceback" not in err, err
    logged = [line for line in err.splitlines() if line.strip() and line.strip() != "stopped serving"]
    assert all(line.startswith("steer serve-reward: ") for line in logged), err  # one line per event
    assert any("HTTP 500: reward" in line and "the model crashed" in line for line in logged), err


@pytest.fixture()
def images():
    return torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# ---- scores through HTTP --------------------------------------------------------------------------

def test_health_names_the_reward_and_is_not_differentiable(server):
    health = requests.get(server.url + "/health", timeout=5).json()
    assert health["name"] == "tests.rewards_for_tests:brightness_or_fault"
    assert health["differentiable"] is False and health["version"] == steer.__version__
    reward = load(server.url)
    assert isinstance(reward, HttpReward) and reward.differentiable is False
    assert reward.remote_name == health["name"] and reward.name == server.url


def test_raw_tensor_scores_are_exact_and_png_within_quantization(server, images):
    before = images.clone()
    exact = load(server.url)(images, PROMPTS)
    assert exact.dtype == torch.float32 and torch.equal(exact, local.brightness(images, PROMPTS))
    png = HttpReward(server.url, image_format="png")(images, PROMPTS)
    torch.testing.assert_close(png, local.brightness(images, PROMPTS), atol=1 / 255, rtol=0)
    assert torch.equal(images, before)  # the client never writes into its input
    x = images.clone().requires_grad_(True)
    assert not load(server.url)(x, PROMPTS).requires_grad  # detached: no gradient over HTTP


def test_weighted_sum_mixes_local_and_http_terms(server, images):
    spec = f"tests.rewards_for_tests:redness=2,{server.url}/=0.5"  # a weight after the URL
    assert steer.rewards.parse_spec(spec) == [("tests.rewards_for_tests:redness", 2.0), (server.url, 0.5)]
    combo = load(spec)
    assert isinstance(combo, WeightedSum) and not combo.differentiable
    expected = 2 * local.redness(images, PROMPTS) + 0.5 * local.brightness(images, PROMPTS)
    torch.testing.assert_close(combo(images, PROMPTS), expected)
    slow = load(server.url, options={server.url + "/": {"read_timeout": 7.5, "image_format": "png"}})
    assert (slow.read_timeout, slow.image_format) == (7.5, "png")


@pytest.fixture(scope="module")
def tiny_pipe():
    from tests.fixtures.tiny import build

    return build("sd")


@pytest.mark.parametrize("method,options", [("best_of_n", {"n": 2}), ("fk", {"particles": 3})])
def test_generate_scores_through_the_server(server, tiny_pipe, method, options):
    run = dict(method=method, seed=1, steps=3, height=32, width=32, **options)
    remote = steer.generate(tiny_pipe, PROMPTS, reward=server.url, **run)
    # the wire carries contiguous float32: the same reduction order as brightness on a contiguous copy
    # (the decoded images are channels-last, whose mean can differ in the last bit)
    here = steer.generate(tiny_pipe, PROMPTS, reward=lambda im, p: local.brightness(im.contiguous(), p), **run)
    assert torch.equal(remote.images, here.images) and torch.equal(remote.rewards, here.rewards)
    assert remote.trace.reward_calls == here.trace.reward_calls > 0


def test_grpo_fine_tunes_through_the_server(server, tmp_path):
    """``steer finetune --method grpo --reward http://...``: the rewards of a run scored over HTTP equal the
    local reward's, step for step (and so do the trained weights)."""
    from steer.finetune import GRPOConfig, grpo, lora
    from steer.pipelines import from_pipe
    from tests.fixtures.tiny import build

    cfg = GRPOConfig(max_steps=2, group_size=2, lora_rank=2, learning_rate=1e-2)
    runs = {}
    for name, reward in (("remote", load(server.url)), ("here", steer.rewards.as_reward(
            lambda im, p: local.brightness(im.contiguous(), p)))):
        process = from_pipe(build("sd"), num_inference_steps=2, guidance_scale=1.0)
        result = grpo(process, reward, PROMPTS, cfg, out_dir=tmp_path / name)
        runs[name] = ([m["reward_mean"] for m in result.metrics], lora.lora_state_dict(process.pipe))
    assert runs["remote"][0] == runs["here"][0]
    assert all(torch.equal(runs["remote"][1][k], runs["here"][1][k]) for k in runs["here"][1])


def test_gradient_methods_refuse_an_http_reward(server, tiny_pipe):
    with pytest.raises(SteerError) as err:
        steer.generate(tiny_pipe, "x", method="reno", reward=server.url, steps=2, height=32, width=32)
    assert f"reward '{server.url}' is not differentiable" in one_line_error(err)
    from steer.finetune.draft import check_differentiable

    with pytest.raises(ValueError, match=f"reward '{server.url}' is not differentiable.*use method grpo"):
        check_differentiable(load(server.url))


# ---- bad requests and failing rewards -------------------------------------------------------------

@pytest.mark.parametrize("body,kind,status,says", [
    (b"junk", wire.JSON, 400, "not JSON"),
    (b"xx", wire.SAFETENSORS, 400, "not a safetensors file"),
    (b"{}", "text/plain", 415, "Content-Type 'text/plain' is not a batch"),
    (json.dumps({"prompts": ["a"], "images": ["%%%"]}).encode(), wire.JSON, 400, "image 0 is not base64"),
    (wire.encode_tensor(torch.rand(2, 3, 8, 8), ["only one"]), wire.SAFETENSORS, 400, "2 images but 1 prompts"),
    (wire.encode_tensor(torch.full((1, 3, 8, 8), float("nan")), ["a"]), wire.SAFETENSORS, 400, "NaN/inf"),
    (wire.encode_tensor(torch.rand(1, 3, 8, 8), ["nan"]), wire.SAFETENSORS, 422, "returned NaN/inf"),
])
def test_bad_requests_get_a_4xx_with_one_line(server, body, kind, status, says):
    r = requests.post(server.url + "/score", data=body, headers={"Content-Type": kind}, timeout=10)
    assert r.status_code == status and says in r.json()["error"] and "\n" not in r.json()["error"], r.text
    assert requests.get(server.url + "/nope", timeout=5).status_code == 404


def test_reward_errors_reach_the_client_in_one_line(server, images):
    reward = HttpReward(server.url, **FAST)
    with pytest.raises(RewardServerError) as err:
        reward(images, ["nan", "x"])  # 422: not retried
    assert "HTTP 422" in one_line_error(err) and "NaN" in str(err.value)
    with pytest.raises(RewardServerError) as err:
        reward(images, ["crash", "x"])  # 500: retried, then reported
    assert "HTTP 500" in one_line_error(err) and "RuntimeError: the model crashed" in str(err.value)
    assert "2 tries" in str(err.value)


# ---- servers that are down, die, or answer garbage ------------------------------------------------

def test_server_down_from_the_start_names_the_fix(tiny_pipe):
    port = free_port()
    start = time.monotonic()
    with pytest.raises(RewardServerError) as err:
        load(f"http://127.0.0.1:{port}=0.5")  # a weighted URL term: checked when the spec is loaded
    message = one_line_error(err)
    assert time.monotonic() - start < 5  # default retries: 0.25 + 0.5 + 1 s of backoff
    assert f"reward server http://127.0.0.1:{port} is not reachable: connection refused" in message
    assert f"start it with `steer serve-reward SPEC --host 127.0.0.1 --port {port}`" in message
    with pytest.raises(SteerError, match="is not reachable.*steer serve-reward"):
        steer.generate(tiny_pipe, "x", method="best_of_n", n=1, reward=f"http://127.0.0.1:{port}", steps=1,
                       height=32, width=32)


def test_server_killed_mid_run_fails_in_one_line_and_bounded_time(tiny_pipe):
    slow = Server("tests.rewards_for_tests:slow_brightness", STEER_TEST_SLOW="0.7")
    killed = []
    killer = threading.Timer(1.0, lambda: (slow.proc.send_signal(signal.SIGKILL), killed.append(time.monotonic())))
    killer.start()
    try:
        with pytest.raises(SteerError) as err:  # fk scores at every resampling step: killed while scoring
            steer.generate(tiny_pipe, "x", method="fk", particles=2, reward=slow.url, steps=6, height=32, width=32)
        assert killed and time.monotonic() - killed[0] < 8
    finally:
        killer.cancel()
        slow.stop(signal.SIGKILL)
    message = one_line_error(err)
    assert f"reward server {slow.url} is not reachable any more (it answered before: did it stop?)" in message
    fix = (f"start it with `steer serve-reward tests.rewards_for_tests:slow_brightness --host 127.0.0.1 "
           f"--port {slow.port}`")
    assert fix in message  # the spec it served, from its /health
    with pytest.raises(RewardServerError, match="not reachable.*connection refused"):  # and between calls
        HttpReward(slow.url, **FAST)


class Junk(BaseHTTPRequestHandler):
    """Answers by the first path segment: /<mode>/health is always a fine health, /<mode>/score is junk."""

    hits: dict = {}

    def log_message(self, *args):
        pass

    def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # a client that timed out and left
            pass

    def do_GET(self):
        mode = self.path.split("/")[1]
        self._answer(200, "[1, 2]" if mode == "nohealth" else json.dumps({"name": "junk"}))

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        mode = self.path.split("/")[1]
        Junk.hits[mode] = Junk.hits.get(mode, 0) + 1
        if mode == "hang":
            time.sleep(3)
        answers = {"nonjson": (200, "<html>hello</html>"), "count": (200, '{"scores": [1.0]}'),
                   "nan": (200, '{"scores": [NaN, 1.0]}'), "words": (200, '{"scores": ["a", "b"]}'),
                   "noscores": (200, '{"result": 3}'), "fail": (503, '{"error": "overloaded"}'),
                   "hang": (200, '{"scores": [1, 2]}')}
        self._answer(*answers[mode])


@pytest.fixture(scope="module")
def junk():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Junk)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("mode,says", [
    ("nonjson", "answered non-JSON '<html>hello</html>'"), ("count", "answered 1 scores for 2 images"),
    ("nan", "non-finite scores"), ("words", "not all numbers"), ("noscores", "without a list 'scores'"),
])
def test_garbage_answers_are_one_line_errors(junk, images, mode, says):
    reward = HttpReward(f"{junk}/{mode}", **FAST)
    with pytest.raises(RewardServerError) as err:
        reward(images, PROMPTS)
    message = one_line_error(err)
    assert message.startswith(f"reward server {junk}/{mode} answered garbage: /score ") and says in message
    assert "`steer serve-reward` server" in message


def test_unhealthy_failing_and_hanging_servers_are_bounded(junk, images):
    with pytest.raises(RewardServerError, match="answered garbage: /health answered '\\[1, 2\\]'"):
        HttpReward(f"{junk}/nohealth")
    Junk.hits.clear()
    with pytest.raises(RewardServerError) as err:
        HttpReward(f"{junk}/fail", retries=2, backoff=0.05)(images, PROMPTS)
    assert "HTTP 503: overloaded; 3 tries" in one_line_error(err) and Junk.hits["fail"] == 3
    start = time.monotonic()
    with pytest.raises(RewardServerError) as err:
        HttpReward(f"{junk}/hang", read_timeout=0.5, **FAST)(images, PROMPTS)
    assert time.monotonic() - start < 2.5 and "did not answer /score within 0.5 s" in one_line_error(err)


@pytest.mark.parametrize("spec,says", [
    ("http://", "must look like http://HOST:PORT"), ("http://127.0.0.1:99999", "bad port"),
    ("http://127.0.0.1:8085=abc", "weight 'abc' of 'http://127.0.0.1:8085' is not a number"),
    ("http://127.0.0.1:8085,http://127.0.0.1:8085/=2", "appears twice"),
])
def test_bad_url_specs(spec, says):
    with pytest.raises(ValueError, match=says):
        load(spec)


def test_serve_reward_cli_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from steer.cli import app

    r = CliRunner().invoke(app, ["serve-reward", "hsp", "--port", "0"])
    assert r.exit_code == 2 and "unknown reward 'hsp'; did you mean 'hps'" in r.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(app, ["serve-reward", "tests.rewards_for_tests:brightness", "--port", str(port)])
    assert r.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in r.output and "pick another --port" in r.output
    r = CliRunner().invoke(app, ["serve-reward", "jpeg", "--port", "70000"])
    assert r.exit_code == 2 and "--port must be in 0..65535" in r.output
