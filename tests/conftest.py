"""Test-wide setup: offline, deterministic, and no network connections."""
import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin while waiting make a 2-thread torch ~50x slower on a shared, loaded CPU
# (measured: tiny UNet call 1.7 s vs 0.05 s); must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist (the default run: ``-n 2`` in pyproject.toml) each worker takes one core; tiny
# models gain little from a second thread, and two workers on two threads each would oversubscribe.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


class NetworkBlocked(RuntimeError):
    pass


def _blocked(*args, **kwargs):
    raise NetworkBlocked("tests must not open network connections (offline test suite)")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Fail any test that tries to reach the network (local AF_UNIX sockets are allowed)."""
    real_connect = socket.socket.connect

    def guarded_connect(self, address, *a, **k):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0] if isinstance(address, tuple) else address
            if host not in ("127.0.0.1", "::1", "localhost"):
                _blocked()
        return real_connect(self, address, *a, **k)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    real_create = socket.create_connection  # saved first: the patched name must not call itself
    monkeypatch.setattr(socket, "create_connection", lambda addr, *a, **k: (
        _blocked() if addr[0] not in ("127.0.0.1", "::1", "localhost") else real_create(addr, *a, **k)))
    yield


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads and lose much under contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Every test starts from the same global RNG state, so a result never depends on which tests ran before
    it in the same process (under xdist the files a worker runs first vary from run to run)."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
