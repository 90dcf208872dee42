"""Shared test helpers: central-difference gradients, the real MNIST folder, worker processes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numpy_cnn.data import load
from numpy_cnn.data.mnist import FILES, cache_dir, find_in

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mnist"


def numerical_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f() / d x by central differences, perturbing x in place one entry at a time."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-6) -> None:
    """Equal within rtol of the largest magnitude in `expected` (0/0-safe)."""
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-12)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """An absolute folder with the real MNIST files, raw or .gz: $NUMPY_CNN_DATA if set (then only
    it, as the loader does), else ../shared beside the repo, else the user cache."""
    env = os.environ.get("NUMPY_CNN_DATA")
    if env:
        missing = [name for name in FILES if not find_in(Path(env), name)]
        if missing:
            pytest.fail(f"NUMPY_CNN_DATA={env}: no {', '.join(missing)} (raw or .gz) there", pytrace=False)
        return Path(env).resolve()
    if all(find_in(SHARED_MNIST, name) for name in FILES):
        return SHARED_MNIST
    load()  # fetches and verifies into the user cache, exactly as a user's first run does
    return cache_dir("mnist").resolve()


@pytest.fixture
def hashed(monkeypatch) -> list[int]:
    """The sizes of the data given to hashlib.sha256, one per call, from now on."""
    calls, real = [], hashlib.sha256

    def counting(data=b"", *args, **kwargs):
        calls.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counting)
    return calls


@pytest.fixture(scope="session")
def job_keys(tmp_path_factory) -> Path:
    """A folder of CURVE keys, as `launch keygen` writes them."""
    from numpy_cnn.distributed import keys

    return keys.write(tmp_path_factory.mktemp("keys") / "job")


@pytest.fixture
def server_transport(job_keys):
    """make(**kwargs) -> a ZmqServerTransport holding the job's server keys; closed after the test."""
    from numpy_cnn.distributed import keys
    from numpy_cnn.distributed.transport import ZmqServerTransport

    made = []

    def make(**kwargs):
        made.append(ZmqServerTransport(keys.read(job_keys, keys.SERVER), **kwargs))
        return made[-1]

    yield make
    for transport in made:
        if not transport.closed:
            transport.close()


@pytest.fixture
def spawn_workers(job_keys):
    """start(endpoint, n) -> n real worker processes; all are killed and reaped after the test."""
    started: list[subprocess.Popen] = []

    def start(endpoint: str, n: int, ranks=None, join_timeout: float = 30) -> list[subprocess.Popen]:
        for rank in range(n) if ranks is None else ranks:
            argv = ["-m", "numpy_cnn.launch", "worker", "--connect", endpoint, "--rank", str(rank)]
            argv += ["--join-timeout", str(join_timeout)]
            started.append(
                subprocess.Popen(
                    # --watch-stdin: if this test process dies, its workers exit too
                    [sys.executable, *argv, "--keys", str(job_keys), "--watch-stdin"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
                )
            )
        return started[-n:] if ranks is None else started[-len(ranks) :]

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        p.stdin.close()
        p.stdout.close()


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A fresh cache for the markers of checked data sets (not the user's), and no data set of
    your own left loaded from another test."""
    from numpy_cnn.data import arrays

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    arrays._load.cache_clear()
    yield
    arrays._load.cache_clear()
