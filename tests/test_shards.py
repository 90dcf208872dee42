"""Micro-shards and the reduction tree: any split of the work over workers gives the same bits."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_cnn.shards import (
    children,
    cover,
    leaves_of,
    parse_nodes,
    plan,
    shard_bounds,
    share,
    tree_sum,
    worker_shards,
)


@pytest.mark.parametrize("n,shards", [(64, 4), (50, 4), (3, 4), (1, 1), (32, 8), (7, 3)])
def test_shard_bounds_partition_the_batch_evenly(n, shards):
    bounds = shard_bounds(n, shards)
    assert len(bounds) == shards
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_worker_shards_and_bad_splits():
    assert [worker_shards(r, 2, 4) for r in range(2)] == [(0, 2), (2, 4)]
    assert worker_shards(0, 1, 4) == (0, 4)
    with pytest.raises(ValueError, match="evenly"):
        worker_shards(0, 3, 4)
    with pytest.raises(ValueError, match="rank"):
        worker_shards(2, 2, 4)


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


@pytest.mark.parametrize("shards", [1, 2, 4, 6, 8, 12])
def test_every_worker_count_gives_the_same_bits(shards):
    leaves = _leaves(shards, np.random.default_rng(shards))
    expected = None
    for workers in [w for w in range(1, shards + 1) if shards % w == 0]:
        # each worker pre-sums the subtrees it owns; the server adds the subtrees it receives
        parts = {}
        for rank in range(workers):
            lo, hi = worker_shards(rank, workers, shards)
            mine = {k: v for k, v in leaves.items() if lo <= k[0] < hi}
            for node in cover(lo, hi, shards):
                parts[node] = [a.copy() for a in tree_sum(node, mine, {})]
        total = tree_sum((0, shards), parts, {})
        if expected is None:
            expected = [a.copy() for a in total]
            oracle = [sum(leaves[(k, k + 1)][i].astype(np.float64) for k in range(shards)) for i in range(2)]
            for got, want in zip(total, oracle):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(total, expected)), workers


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


def test_plan_and_share_keep_every_shard_exactly_once():
    for workers, shards in [(2, 4), (4, 4), (4, 8), (3, 6)]:
        for alive in ([0], [1, 2][: workers - 1], list(range(workers)), [workers - 1]):
            work = plan(alive, workers, shards)
            assert sorted(work) == sorted(alive)
            assert leaves_of([n for nodes in work.values() for n in nodes]) == list(range(shards))
            for nodes in work.values():
                parse_nodes([list(n) for n in nodes], shards)  # each is a node of the tree
    assert share([(0, 2), (2, 4)], [5, 6], 4) == {5: [(0, 2)], 6: [(2, 4)]}
    assert share([(0, 4)], [1, 2, 3], 8) == {1: [(0, 2)], 2: [(2, 3)], 3: [(3, 4)]}
    for bad in ([[1, 3]], [[0, 2], [1, 2]], [[0, 5]], [], [[0, True]], "0-2"):
        with pytest.raises(ValueError):
            parse_nodes(bad, 4)
    assert np.array_equal(leaves_of([(2, 4), (0, 1)]), [0, 2, 3])
