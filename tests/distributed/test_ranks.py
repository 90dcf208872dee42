"""Which rank computes which micro-shards: any split of the work over workers gives the same bits."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_cnn.distributed.ranks import parse_nodes, plan, share, worker_shards
from numpy_cnn.shards import cover, leaves_of, tree_sum


def _leaves(shards, rng):
    return {
        (k, k + 1): [rng.standard_normal(s).astype(np.float32) for s in [(5, 3), (7,)]] for k in range(shards)
    }


def test_worker_shards_and_bad_splits():
    assert [worker_shards(r, 2, 4) for r in range(2)] == [(0, 2), (2, 4)]
    assert worker_shards(0, 1, 4) == (0, 4)
    with pytest.raises(ValueError, match="evenly"):
        worker_shards(0, 3, 4)
    with pytest.raises(ValueError, match="rank"):
        worker_shards(2, 2, 4)


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
