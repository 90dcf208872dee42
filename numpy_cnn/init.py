"""Weight initializers, all drawn from an explicit numpy Generator so a seed fixes every bit."""

from __future__ import annotations

import numpy as np


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear weight (in, out) or a Conv2d weight (out, in, kh, kw)."""
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 4:
        receptive = shape[2] * shape[3]
        return shape[1] * receptive, shape[0] * receptive
    raise ValueError(f"no fan-in/fan-out rule for a weight of shape {shape}")


class Initializer:
    """Makes an array of a given shape and dtype."""

    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator, dtype) -> np.ndarray:
        raise NotImplementedError


class XavierUniform(Initializer):
    """Glorot & Bengio (2010): U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = gain

    def __call__(self, shape, rng, dtype):
        fan_in, fan_out = fans(shape)
        a = self.gain * np.sqrt(6.0 / (fan_in + fan_out))
        # draw in float64 and round once, so float32 and float64 nets start from the same numbers
        return rng.uniform(-a, a, size=shape).astype(dtype)


class Zeros(Initializer):
    """All zeros."""

    def __call__(self, shape, rng, dtype):
        return np.zeros(shape, dtype=dtype)
