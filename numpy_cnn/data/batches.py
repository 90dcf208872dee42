"""Seeded mini-batches: global batch (epoch, index) is a pure function of the seed.

`global_batch` is the one place a batch is made: serial training, every worker and the server
all ask it, so they cannot disagree on which samples (and shifts) batch (epoch, index) holds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


def to_float(images: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Samples (n, ...) -> float32 of shape (n, *shape): uint8 scaled to [0, 1], float32 as they are.

    Only these rows are read: on a memory-mapped split, pass the rows of a batch or a chunk."""
    if images.dtype == np.uint8:
        x = np.divide(images, np.float32(255), dtype=np.float32)  # correctly rounded, as torchvision
    else:  # a plain array (not a memmap view) of these rows: no copy when they already are one
        x = np.ascontiguousarray(images, dtype=np.float32)
    return x.reshape(len(images), *shape)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of range(n) that epoch `epoch` visits."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got {seed}, {epoch}")
    return np.random.default_rng([seed, epoch]).permutation(n)


def epoch_shifts(n: int, seed: int, epoch: int, max_shift: int) -> np.ndarray:
    """(n, 2) offsets (dy, dx) in [-max_shift, max_shift], one per position of epoch `epoch`'s order."""
    return np.random.default_rng([seed, epoch, 1]).integers(-max_shift, max_shift + 1, size=(n, 2))


def shift_images(images: np.ndarray, shifts: np.ndarray, max_shift: int) -> np.ndarray:
    """Translate each (H, W) or (C, H, W) image by its (dy, dx): out[..., y, x] = image[..., y + dy,
    x + dx], zero outside; every channel of an image moves together."""
    if max_shift == 0:
        return images
    n, h, w = len(images), *images.shape[-2:]
    lead = images.shape[1:-2]  # the channel axis, if any
    s, ph, pw = max_shift, h + 2 * max_shift, w + 2 * max_shift
    padded = np.zeros((n, *lead, ph, pw), images.dtype)
    padded[..., s : s + h, s : s + w] = images
    # one gather from the padded images, flat: plane p's window starts at its image's corner
    # (dy + s, dx + s); measured 2x faster than fancy indexing a sliding_window_view
    planes = np.arange(n * math.prod(lead)).reshape(n, *lead) * (ph * pw)
    corners = ((shifts[:, 0] + s) * pw + shifts[:, 1] + s).reshape(n, *(1,) * len(lead))
    window = np.arange(h)[:, None] * pw + np.arange(w)  # (h, w) offsets inside a padded plane
    return padded.reshape(-1).take((planes + corners)[..., None, None] + window)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def batch_indices(order: np.ndarray, batch_size: int, step: int) -> np.ndarray:
    """Sample indices of batch `step`; the last batch of an epoch may be short."""
    return order[step * batch_size : (step + 1) * batch_size]


@dataclass(frozen=True)
class Batch:
    """One global batch: which samples of the split, in order, and each one's shift (dy, dx)."""

    indices: np.ndarray  # (B,) positions in the split
    shifts: np.ndarray | None  # (B, 2), or None without augmentation
    max_shift: int

    def __len__(self) -> int:
        return len(self.indices)

    def samples(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        shape: tuple[int, ...],
        lo: int = 0,
        hi: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(x float32 (hi-lo, *shape), y) of samples [lo, hi) of the batch, shifted if augmenting;
        only these rows of `images` are read (a memory-mapped split stays on disk)."""
        idx = self.indices[lo:hi]
        moved = images[idx]
        if self.shifts is not None:
            moved = shift_images(moved, self.shifts[lo:hi], self.max_shift)
        return to_float(moved, shape), labels[idx]


@functools.lru_cache(maxsize=2)  # a worker asks for every batch of an epoch in turn: draw once
def _epoch_plan(n: int, seed: int, epoch: int, max_shift: int) -> tuple[np.ndarray, np.ndarray | None]:
    order = epoch_order(n, seed, epoch)
    shifts = epoch_shifts(n, seed, epoch, max_shift) if max_shift else None
    for a in (order, shifts):
        if a is not None:
            a.setflags(write=False)  # shared by every caller
    return order, shifts


def global_batch(n: int, batch_size: int, seed: int, epoch: int, index: int, max_shift: int = 0) -> Batch:
    """Batch `index` of epoch `epoch` over a split of n samples; the last one may be short."""
    order, shifts = _epoch_plan(n, seed, epoch, max_shift)
    return Batch(
        batch_indices(order, batch_size, index),
        None if shifts is None else batch_indices(shifts, batch_size, index),
        max_shift,
    )


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    shape: tuple[int, ...],
    start: int = 0,
    max_shift: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x float32 (B, *shape), y int64 (B,)) for each step of the epoch from `start` on; with
    max_shift > 0 each image is randomly translated (augmentation), as drawn by epoch_shifts."""
    for index in range(start, steps_per_epoch(len(images), batch_size)):
        yield global_batch(len(images), batch_size, seed, epoch, index, max_shift).samples(
            images, labels, shape
        )
