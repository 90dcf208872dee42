"""The batch order is a pure function of (seed, epoch), covers every sample once, and is float32."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_cnn.data import (
    batch_indices,
    batches,
    epoch_order,
    epoch_shifts,
    global_batch,
    shift_images,
    steps_per_epoch,
    to_float,
)


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


IMAGE = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.uint8)
# out[y, x] = image[y + dy, x + dx], zero outside: a positive dy moves the content up, a positive
# dx moves it left. Written out by hand, not computed.
SHIFTED = {
    (0, 0): [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
    (1, 0): [[4, 5, 6], [7, 8, 9], [0, 0, 0]],
    (-1, 0): [[0, 0, 0], [1, 2, 3], [4, 5, 6]],
    (0, 1): [[2, 3, 0], [5, 6, 0], [8, 9, 0]],
    (0, -1): [[0, 1, 2], [0, 4, 5], [0, 7, 8]],
    (1, 1): [[5, 6, 0], [8, 9, 0], [0, 0, 0]],
    (1, -1): [[0, 4, 5], [0, 7, 8], [0, 0, 0]],
    (-1, 1): [[0, 0, 0], [2, 3, 0], [5, 6, 0]],
    (-1, -1): [[0, 0, 0], [0, 1, 2], [0, 4, 5]],
    (2, 0): [[7, 8, 9], [0, 0, 0], [0, 0, 0]],
    (0, -2): [[0, 0, 1], [0, 0, 4], [0, 0, 7]],
    (2, 2): [[9, 0, 0], [0, 0, 0], [0, 0, 0]],
}


@pytest.mark.parametrize("max_shift", [2, 3])
def test_shift_images_moves_every_direction_and_fills_zeros(max_shift):
    shifts = np.array(list(SHIFTED), dtype=np.int64)
    got = shift_images(np.repeat(IMAGE[None], len(shifts), axis=0), shifts, max_shift)
    for k, shift in enumerate(SHIFTED):
        np.testing.assert_array_equal(got[k], SHIFTED[shift], err_msg=f"shift {shift}")
    np.testing.assert_array_equal(shift_images(IMAGE[None], np.array([[1, 1]]), 0)[0], IMAGE)  # off


def test_shift_images_moves_every_channel_of_an_image_together():
    shifts = np.array(list(SHIFTED), dtype=np.int64)
    # channel c of every image is IMAGE + 10 c; each image has its own shift, as in a batch
    images = np.stack([IMAGE + np.uint8(10 * c) for c in range(3)])
    got = shift_images(np.repeat(images[None], len(shifts), axis=0), shifts, 2)
    assert got.shape == (len(shifts), 3, 3, 3)
    for k, shift in enumerate(SHIFTED):
        for c in range(3):
            inside = np.array(SHIFTED[shift]) > 0
            expected = np.where(inside, np.array(SHIFTED[shift]) + 10 * c, 0)
            np.testing.assert_array_equal(got[k, c], expected, err_msg=f"shift {shift}, channel {c}")


def test_to_float_takes_float32_samples_as_they_are():
    x = np.array([[0.25, -3.0], [7.5, 1e-8]], dtype=np.float32)
    np.testing.assert_array_equal(to_float(x, (2,)), x)
    assert to_float(x, (1, 1, 2)).shape == (2, 1, 1, 2)


def test_global_batch_is_the_one_batch_everyone_uses():
    images = np.arange(50 * 9, dtype=np.uint8).reshape(50, 3, 3)
    labels = np.arange(50) % 10
    for index in range(steps_per_epoch(50, 8)):
        batch = global_batch(50, 8, seed=4, epoch=3, index=index, max_shift=1)
        assert len(batch) == (8 if index < 6 else 2)  # the last batch is short
        np.testing.assert_array_equal(batch.indices, batch_indices(epoch_order(50, 4, 3), 8, index))
        np.testing.assert_array_equal(batch.shifts, batch_indices(epoch_shifts(50, 4, 3, 1), 8, index))
        x, y = batch.samples(images, labels, (9,))
        np.testing.assert_array_equal(y, labels[batch.indices])
        want = shift_images(images[batch.indices], batch.shifts, 1).reshape(len(batch), 9) / np.float32(255)
        np.testing.assert_array_equal(x, want)
        # a worker's slice of the batch has exactly the bits of the same rows of the whole batch
        for lo, hi in [(0, 1), (1, 5), (5, len(batch))]:
            xs, ys = batch.samples(images, labels, (9,), lo, hi)
            assert xs.tobytes() == x[lo:hi].tobytes() and np.array_equal(ys, y[lo:hi])
    served = [y for _, y in batches(images, labels, 8, 4, 3, (9,), max_shift=1)]
    assert all(
        np.array_equal(s, labels[global_batch(50, 8, 4, 3, i, 1).indices]) for i, s in enumerate(served)
    )
    assert global_batch(50, 8, 4, 3, 0).shifts is None  # no augmentation, no shifts drawn


def test_shift_images_matches_a_plain_copy_of_each_image_for_random_sizes_and_shifts():
    rng = np.random.default_rng(5)
    for _ in range(100):
        n, s = int(rng.integers(0, 9)), int(rng.integers(1, 4))
        shape = (n, *([int(rng.integers(1, 4))] if rng.integers(2) else []), 7, 9)
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        shifts = rng.integers(-s, s + 1, (n, 2))
        want = np.zeros_like(images)
        for i, (dy, dx) in enumerate(shifts):  # out[y, x] = image[y + dy, x + dx] where that exists
            out_y, in_y = slice(max(0, -dy), 7 - max(0, dy)), slice(max(0, dy), 7 - max(0, -dy))
            out_x, in_x = slice(max(0, -dx), 9 - max(0, dx)), slice(max(0, dx), 9 - max(0, -dx))
            want[i, ..., out_y, out_x] = images[i, ..., in_y, in_x]
        got = shift_images(images, shifts, s)
        assert got.dtype == images.dtype and got.shape == shape
        np.testing.assert_array_equal(got, want)
