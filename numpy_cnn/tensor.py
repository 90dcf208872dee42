"""Tensor: a learnable parameter's value and gradient, plus the library's default dtype."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

_default_dtype = np.dtype(np.float32)


def get_default_dtype() -> np.dtype:
    return _default_dtype


@contextlib.contextmanager
def default_dtype(dtype: DTypeLike) -> Iterator[None]:
    """Build Tensors in `dtype` inside the block (float64 is for gradient checks)."""
    global _default_dtype
    previous, _default_dtype = _default_dtype, np.dtype(dtype)
    try:
        yield
    finally:
        _default_dtype = previous


class Tensor:
    """A parameter's value `.data` and its gradient `.grad`, two arrays of one shape and dtype."""

    def __init__(self, data: ArrayLike, dtype: DTypeLike | None = None) -> None:
        self.data = np.array(data, dtype=_default_dtype if dtype is None else dtype, copy=True)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, dtype={self.dtype})"
