"""No network unless a hub model that is not cached is asked for: reward-weight lookups and cached hub
ids open no connection even without HF_HUB_OFFLINE; an uncached hub id fails at once (no retries);
a user's reward module in the working directory imports without the directory shadowing anything."""
from __future__ import annotations

import socket
import sys
import time

import pytest
from typer.testing import CliRunner

from steer.cli import app


@pytest.fixture
def online(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE off, an empty Hugging Face cache, and every DNS lookup / connection recorded and refused."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    attempts = []

    def lookup(host, *a, **k):
        attempts.append(("dns", host))
        raise socket.gaierror(socket.EAI_NONAME, "no network in tests")

    def connect(self, address, *a, **k):
        attempts.append(("connect", address))
        raise ConnectionRefusedError("no network in tests")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


@pytest.mark.parametrize("spec", ["hps", "pickscore", "clip", "aesthetic"])
def test_a_missing_reward_weight_errors_without_any_network_attempt(online, spec):
    from steer.rewards import registry
    from steer.rewards.weights import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="not found: get it from"):
        registry.load(spec)
    assert online == []


def test_a_cached_hub_model_loads_without_any_network_attempt(online, tmp_path):
    from steer.pipelines import load
    from tests.fixtures.tiny import build

    repo = tmp_path / "hub" / "models--steer-tests--tiny-sd"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    build("sd").save_pretrained(repo / "snapshots" / ("0" * 40))
    process = load("steer-tests/tiny-sd", num_inference_steps=2)
    assert process.num_steps == 2 and online == []


def test_an_uncached_hub_model_fails_at_once_with_one_line(online, tmp_path):
    t0 = time.perf_counter()
    r = CliRunner().invoke(app, ["generate", "--model", "steer-tests/not-cached", "-p", "x", "--reward",
                                 "tests.rewards_for_tests:brightness", "--out", str(tmp_path / "o")])
    seconds = time.perf_counter() - t0
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: model 'steer-tests/not-cached'"), r.output
    assert "could not be reached" in lines[0] and "hf download steer-tests/not-cached" in lines[0]
    assert seconds < 5 and len([a for a in online if a[0] == "dns"]) <= 2, (seconds, online)  # no retries


def test_an_uncached_hub_model_offline_names_the_setting(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from steer.pipelines.loading import ModelNotFoundError, load

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set"):
        load("steer-tests/not-cached")


def test_the_working_directory_is_consulted_last_and_only_for_the_named_module(monkeypatch, tmp_path):
    from steer.rewards.combine import import_dotted

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cwd_reward_mod.py").write_text("def score(images, prompts):\n    return images.mean((1, 2, 3))\n")
    import_dotted("tests.rewards_for_tests:brightness")  # importable as it is: the cwd is not added
    assert str(tmp_path) not in sys.path
    try:
        assert callable(import_dotted("cwd_reward_mod:score"))
        assert sys.path[-1] == str(tmp_path) and sys.path.count(str(tmp_path)) == 1
    finally:
        sys.modules.pop("cwd_reward_mod", None)
    with pytest.raises(ValueError, match="cannot import module 'no_such_reward_mod'"):
        import_dotted("no_such_reward_mod:score")
