"""What a run measures: test accuracy (in chunks, so the im2col buffers stay small), and the
per-epoch records that serial and data-parallel training both write."""

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
    was_training = net.training
    net.eval()  # no Dropout while measuring
    try:
        correct = _count_correct(net, split, shape, chunk, between)
    finally:
        net.train(was_training)
    return correct / len(split)


def _count_correct(net: Net, split: Split, shape: tuple[int, ...], chunk: int, between) -> int:
    correct = 0
    for i in range(0, len(split), chunk):
        preds = net.forward(to_float(split.images[i : i + chunk], shape))
        correct += int(np.sum(preds.argmax(axis=1) == split.labels[i : i + chunk]))
        if between is not None:
            between()  # e.g. the parameter server keeping its heartbeats going
    return correct


def epoch_record(
    epoch: int,
    step: int,
    loss: float,
    train_acc: float,
    test_acc: float,
    seconds: float,
    samples: int,
) -> dict:
    """One line of --metrics output; distributed training writes the same keys."""
    return {
        "epoch": epoch,
        "step": step,
        "loss": round(loss, 6),
        "train_acc": round(train_acc, 6),
        "test_acc": round(test_acc, 6),
        "seconds": round(seconds, 4),
        "samples_per_s": round(samples / seconds, 1) if seconds > 0 else None,
    }


def format_record(r: dict, epochs: int) -> str:
    return (
        f"epoch {r['epoch']}/{epochs}  step {r['step']}  loss {r['loss']:.4f}  "
        f"train {100 * r['train_acc']:.2f}%  test {100 * r['test_acc']:.2f}%  "
        f"{r['seconds']:.2f} s  {r['samples_per_s']} samples/s"
    )
