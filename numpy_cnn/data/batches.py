"""Seeded mini-batches: the order of epoch e is a pure function of (seed, epoch)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


def to_float(images: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 images (n, 28, 28) -> float32 in [0, 1] of shape (n, *shape)."""
    x = np.divide(images, np.float32(255), dtype=np.float32)  # correctly rounded, as torchvision
    return x.reshape(len(images), *shape)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of range(n) that epoch `epoch` visits."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got {seed}, {epoch}")
    return np.random.default_rng([seed, epoch]).permutation(n)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def batch_indices(order: np.ndarray, batch_size: int, step: int) -> np.ndarray:
    """Sample indices of batch `step`; the last batch of an epoch may be short."""
    return order[step * batch_size : (step + 1) * batch_size]


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    shape: tuple[int, ...],
    start: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x float32 (B, *shape), y int64 (B,)) for each step of the epoch from `start` on."""
    order = epoch_order(len(images), seed, epoch)
    for step in range(start, steps_per_epoch(len(images), batch_size)):
        idx = batch_indices(order, batch_size, step)
        yield to_float(images[idx], shape), labels[idx]
