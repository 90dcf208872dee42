"""The batch order is a pure function of (seed, epoch), covers every sample once, and is float32."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_cnn.data import batch_indices, batches, epoch_order, steps_per_epoch, to_float


def test_order_is_a_pure_function_of_seed_and_epoch():
    a, b = epoch_order(1000, 3, 2), epoch_order(1000, 3, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, epoch_order(1000, 3, 1))
    assert not np.array_equal(a, epoch_order(1000, 4, 2))
    np.testing.assert_array_equal(np.sort(a), np.arange(1000))


def test_batches_cover_the_epoch_once_with_a_short_last_batch():
    images = np.arange(10 * 4, dtype=np.uint8).reshape(10, 2, 2)
    labels = np.arange(10)
    got = list(batches(images, labels, 4, seed=1, epoch=0, shape=(4,)))
    assert [len(y) for _, y in got] == [4, 4, 2] and steps_per_epoch(10, 4) == 3
    np.testing.assert_array_equal(np.sort(np.concatenate([y for _, y in got])), labels)
    order = epoch_order(10, 1, 0)
    np.testing.assert_array_equal(got[1][1], batch_indices(order, 4, 1))
    x, y = got[0]
    assert x.dtype == np.float32 and x.shape == (4, 4)
    np.testing.assert_array_equal(x, images[y].reshape(4, 4).astype(np.float32) / 255)


def test_start_skips_steps():
    images, labels = np.zeros((10, 1, 1), np.uint8), np.arange(10)
    all_steps = [y for _, y in batches(images, labels, 3, 0, 0, (1,))]
    later = [y for _, y in batches(images, labels, 3, 0, 0, (1,), start=2)]
    assert len(later) == 2
    np.testing.assert_array_equal(all_steps[2], later[0])


def test_to_float_range_and_shape():
    x = to_float(np.array([[[0, 255]]], dtype=np.uint8), (1, 1, 2))
    assert x.dtype == np.float32 and x.shape == (1, 1, 1, 2)
    assert x.min() == 0.0 and x.max() == 1.0


def test_negative_seed_is_an_error():
    with pytest.raises(ValueError):
        epoch_order(10, -1, 0)
