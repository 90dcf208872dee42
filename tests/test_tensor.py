"""Tensor: value and gradient of one shape, float32 unless asked otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_cnn import Tensor, default_dtype, get_default_dtype


def test_float32_by_default_with_a_zero_gradient_of_the_same_shape():
    t = Tensor([[1, 2], [3, 4]])
    assert t.dtype == np.float32 and t.grad.dtype == np.float32
    assert t.grad.shape == t.shape == (2, 2) and not t.grad.any()


def test_data_is_a_copy():
    src = np.ones(3, dtype=np.float32)
    t = Tensor(src)
    src[0] = 5
    assert t.data[0] == 1


@pytest.mark.parametrize("dtype", [np.float64, np.dtype("float64"), "float64"])
def test_explicit_dtype_in_any_spelling(dtype):
    assert Tensor([1.0], dtype).dtype == np.float64


def test_default_dtype_block_is_restored_even_on_error():
    with pytest.raises(RuntimeError), default_dtype(np.float64):
        assert Tensor([1.0]).dtype == np.float64
        raise RuntimeError
    assert get_default_dtype() == np.float32
