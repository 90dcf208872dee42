"""Learning-rate schedules: the rate of a step is a pure function of (base lr, step, total steps)."""

from __future__ import annotations

import math
from collections.abc import Callable


def constant(lr: float, step: int, total: int) -> float:
    return lr


def cosine(lr: float, step: int, total: int) -> float:
    """Half a cosine from lr at step 0 down to 0 at step `total` (Loshchilov & Hutter, 2017)."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


SCHEDULES: dict[str, Callable[[float, int, int], float]] = {"constant": constant, "cosine": cosine}
