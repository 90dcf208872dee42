"""Test accuracy of a net on a data split, in chunks so the im2col buffers stay small."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .data import Split, to_float
from .net import Net


def evaluate(
    net: Net,
    split: Split,
    shape: tuple[int, ...],
    chunk: int = 1000,
    between: Callable[[], None] | None = None,
) -> float:
    """Fraction of `split` that `net` classifies correctly; calls `between()` after each chunk."""
    correct = 0
    for i in range(0, len(split), chunk):
        preds = net.forward(to_float(split.images[i : i + chunk], shape))
        correct += int(np.sum(preds.argmax(axis=1) == split.labels[i : i + chunk]))
        if between is not None:
            between()  # e.g. the parameter server keeping its heartbeats going
    return correct / len(split)
