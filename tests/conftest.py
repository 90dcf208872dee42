"""Shared test helpers: central-difference gradients and the real MNIST folder."""

from __future__ import annotations

import os
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
    """A folder with the real MNIST files: $NUMPY_CNN_DATA, ../shared beside the repo, or the cache."""
    candidates = [os.environ.get("NUMPY_CNN_DATA"), SHARED_MNIST]
    for path in filter(None, candidates):
        if all(find_in(Path(path), name) for name in FILES):
            return Path(path)
    load()  # fetches and verifies into the user cache, exactly as a user's first run does
    return cache_dir("mnist")
