"""Micro-shards and the reduction tree: bounds, the tree's nodes and covers, its sum."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_cnn import layers
from numpy_cnn.loss import CrossEntropyLoss
from numpy_cnn.net import Net
from numpy_cnn.shards import ShardedStep, children, cover, shard_bounds, shard_gradient, tree_sum
from numpy_cnn.tensor import default_dtype


@pytest.mark.parametrize("n,shards", [(64, 4), (50, 4), (3, 4), (1, 1), (32, 8), (7, 3)])
def test_shard_bounds_partition_the_batch_evenly(n, shards):
    bounds = shard_bounds(n, shards)
    assert len(bounds) == shards
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_children_split_at_a_power_of_two():
    assert children((0, 4)) == ((0, 2), (2, 4))
    assert children((0, 6)) == ((0, 4), (4, 6))
    assert children((4, 7)) == ((4, 6), (6, 7))
    assert children((0, 2)) == ((0, 1), (1, 2))


def test_cover_is_the_fewest_whole_subtrees():
    assert cover(0, 4, 4) == [(0, 4)]
    assert cover(2, 4, 4) == [(2, 4)]
    assert cover(1, 2, 4) == [(1, 2)]
    assert cover(0, 3, 6) == [(0, 2), (2, 3)]
    assert cover(3, 6, 6) == [(3, 4), (4, 6)]
    for shards in range(1, 13):
        for lo in range(shards):
            for hi in range(lo + 1, shards + 1):
                nodes = cover(lo, hi, shards)
                assert nodes[0][0] == lo and nodes[-1][1] == hi
                assert all(a[1] == b[0] for a, b in zip(nodes, nodes[1:]))
    with pytest.raises(ValueError):
        cover(2, 2, 4)


def _leaves(shards, rng):
    return {
        (k, k + 1): [rng.standard_normal(s).astype(np.float32) for s in [(5, 3), (7,)]] for k in range(shards)
    }


def test_tree_sum_reuses_its_buffers_and_reports_a_missing_shard():
    leaves = _leaves(4, np.random.default_rng(0))
    scratch: dict = {}
    first = tree_sum((0, 4), leaves, scratch)
    buffers = [id(a) for a in first]
    second = tree_sum((0, 4), leaves, scratch)
    assert [id(a) for a in second] == buffers
    del leaves[(2, 3)]
    with pytest.raises(KeyError, match="shard 2"):
        tree_sum((0, 4), leaves, {})


def _dropout_net() -> Net:
    rng = np.random.default_rng(0)
    with default_dtype(np.float64):
        return Net(
            [
                layers.Linear(20, 30, rng=rng),
                layers.Dropout(0.5),
                layers.ReLU(),
                layers.Linear(30, 5, rng=rng),
            ]
        )


def _grads(net: Net) -> list[np.ndarray]:
    return [p.grad.copy() for p in net.parameters]


def test_keyed_micro_shards_draw_the_whole_batch_dropout_masks():
    # each shard's rows get the masks they have in the whole batch, so the shards' gradients add up
    # to the whole batch's (float64, up to rounding) however the batch is cut
    net, loss = _dropout_net(), CrossEntropyLoss()
    rng = np.random.default_rng(1)
    x, y = rng.random((16, 20)), rng.integers(0, 5, 16)
    shard_gradient(net, loss, x, y, 16, noise=(1, 2, 3, 0))
    whole = _grads(net)
    for shards in (2, 4, 5):
        total = [np.zeros_like(g) for g in whole]
        for lo, hi in shard_bounds(16, shards):
            shard_gradient(net, loss, x[lo:hi], y[lo:hi], 16, noise=(1, 2, 3, lo))
            for t, g in zip(total, _grads(net)):
                t += g
        for t, w in zip(total, whole):
            np.testing.assert_allclose(t, w, rtol=0, atol=1e-12)
    shard_gradient(net, loss, x, y, 16, noise=(1, 2, 4, 0))  # another batch: other masks
    assert any(not np.array_equal(g, w) for g, w in zip(_grads(net), whole))


def test_sharded_step_keys_dropout_by_the_global_batch():
    from numpy_cnn.config import Config

    net, loss = _dropout_net(), CrossEntropyLoss()
    rng = np.random.default_rng(2)
    x, y = rng.random((8, 20)), rng.integers(0, 5, 8)
    step = ShardedStep(Config("fc-net", shards=1), net)
    step(x, y, key=(4, 0, 7))
    got = _grads(net)
    step.close()
    shard_gradient(net, loss, x, y, 8, noise=(4, 0, 7, 0))
    assert all(np.array_equal(g, w) for g, w in zip(got, _grads(net)))
