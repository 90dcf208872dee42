"""Micro-shards and the reduction tree: bounds, the tree's nodes and covers, its sum."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_cnn.shards import children, cover, shard_bounds, tree_sum


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
