"""StepLedger: who owes which node of the shard tree, what is orphaned, and what it accepts."""

from __future__ import annotations

import numpy as np

from numpy_cnn.distributed import protocol
from numpy_cnn.distributed.ledger import StepLedger
from numpy_cnn.shards import tree_sum


def grads(nodes, counts, arrays, rank=0):
    frames = protocol.encode(
        protocol.GRADS, arrays, step=0, version=0, rank=rank, nodes=[list(n) for n in nodes],
        counts=counts, loss=0.0, correct=0, compute_s=0.0, started=0.0,
    )  # fmt: skip
    return protocol.decode(frames)


def test_owed_orphaned_and_reassigned_nodes():
    ledger = StepLedger(4)
    ledger.start(10, {0: [(0, 2)], 1: [(2, 4)]})
    assert ledger.owed_by(0) == [(0, 2)] and ledger.owed_by(1) == [(2, 4)] and not ledger.complete
    ledger.assign(ledger.owed_by(1), None)  # rank 1 is lost: its node waits for anyone
    assert ledger.owed_by(None) == [(2, 4)] and ledger.owed_by(1) == []
    ledger.release([(2, 4)])
    ledger.assign([(2, 3), (3, 4)], 0)  # any cover of the orphan's shards will do
    assert sorted(ledger.owed_by(0)) == [(0, 2), (2, 3), (3, 4)]
    ledger.release(ledger.owed_by(0))
    ledger.assign([(0, 4)], 1)  # re-cut: rank 1 takes everything as one node
    assert ledger.owner == {(0, 4): 1}
    ledger.start(10, {})  # nobody ready: the whole tree is orphaned
    assert ledger.owed_by(None) == [(0, 4)]


def test_checks_and_sums_answers_in_the_fixed_tree():
    rng = np.random.default_rng(0)
    leaves = {(k, k + 1): [rng.standard_normal(3).astype(np.float32)] for k in range(4)}
    ledger = StepLedger(4)
    ledger.start(10, {0: [(0, 2)], 1: [(2, 3), (3, 4)]})  # 10 samples: shards of 3, 3, 2, 2
    assert ledger.counts([(0, 2), (2, 3)]) == [6, 2]
    left = [tree_sum((0, 2), leaves, {})[0].copy()]
    assert "not owed by worker 1" in ledger.check(1, grads([(0, 2)], [6], left, 1), 1)
    assert "sample counts [5]" in ledger.check(0, grads([(0, 2)], [5], left), 1)
    assert "2 arrays, expected 1" in ledger.check(0, grads([(0, 2)], [6], left * 2), 1)
    assert "not a node" in ledger.check(0, grads([(0, 3)], [8], left), 1)
    ok = grads([(0, 2)], [6], left)
    assert ledger.check(0, ok, 1) is None
    ledger.accept(ok, 1)
    assert "a duplicate" in ledger.check(0, ok, 1)
    right = grads([(2, 3), (3, 4)], [2, 2], [leaves[(2, 3)][0], leaves[(3, 4)][0]], 1)
    assert ledger.check(1, right, 1) is None
    ledger.accept(right, 1)
    assert ledger.complete and len(ledger.answers) == 2
    assert ledger.gradient()[0].tobytes() == tree_sum((0, 4), leaves, {})[0].tobytes()
