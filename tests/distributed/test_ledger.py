"""StepLedger: who owes which bucket of which node of the shard tree, what is orphaned, and what
it accepts."""

from __future__ import annotations

import numpy as np

from numpy_cnn.distributed import protocol
from numpy_cnn.distributed.ledger import StepLedger
from numpy_cnn.shards import tree_sum

BUCKETS = [[2, 3], [0, 1]]  # two buckets of two parameters each, the last layer's first; each
# travels as one flat array per node


def grads(nodes, counts, arrays, rank=0, bucket=0):
    frames = protocol.encode(
        protocol.GRADS, arrays, step=0, version=0, bucket=bucket, rank=rank, nodes=[list(n) for n in nodes],
        counts=counts, loss=0.0, correct=0, compute_s=0.5, started=1.0, taken=[0.0, 0.0], prepared=[],
        shared=False,
    )  # fmt: skip
    return protocol.decode(frames)


def test_owed_orphaned_and_reassigned_nodes():
    ledger = StepLedger(4, BUCKETS)
    ledger.start(10, {0: [(0, 2)], 1: [(2, 4)]})
    assert ledger.owed_by(0) == [((0, 1), [(0, 2)])] and ledger.owed_by(1) == [((0, 1), [(2, 4)])]
    assert not ledger.complete(0) and not ledger.finished
    for group, nodes in ledger.owed_by(1):
        ledger.assign(group, nodes, None)  # rank 1 is lost: its node waits for anyone
    assert ledger.owed_by(None) == [((0, 1), [(2, 4)])] and ledger.owed_by(1) == []
    ledger.release((0, 1), [(2, 4)])
    ledger.assign((0, 1), [(2, 3), (3, 4)], 0)  # any cover of the orphan's shards will do
    assert ledger.owed_by(0) == [((0, 1), [(0, 2), (2, 3), (3, 4)])]
    ledger.release((0, 1), [(0, 2), (2, 3), (3, 4)])
    ledger.assign((0, 1), [(0, 4)], 1)  # re-cut: rank 1 takes everything as one node
    assert ledger.owner == [{(0, 4): 1}, {(0, 4): 1}]
    ledger.start(10, {})  # nobody ready: the whole tree is orphaned
    assert ledger.owed_by(None) == [((0, 1), [(0, 4)])]


def test_a_lost_worker_owes_only_the_buckets_it_did_not_send():
    rng = np.random.default_rng(1)
    ledger = StepLedger(2, BUCKETS)
    ledger.start(4, {0: [(0, 1)], 1: [(1, 2)]})
    first = [rng.standard_normal(5).astype(np.float32)]
    ledger.accept(grads([(1, 2)], [2], first, rank=1, bucket=0))
    assert ledger.owed_by(1) == [((1,), [(1, 2)])]  # bucket 1 only: that is what a take-over sends
    assert ledger.owed_by(0) == [((0, 1), [(0, 1)])]


def test_the_ranks_still_computing_and_when_the_first_job_ended():
    ledger = StepLedger(2, BUCKETS)
    ledger.start(4, {0: [(0, 1)], 1: [(1, 2)]})
    sums = [np.zeros(5, np.float32)]
    assert ledger.computing() == {0, 1} and ledger.first_done is None
    ledger.accept(grads([(1, 2)], [2], sums, rank=1, bucket=0))
    assert ledger.computing() == {0, 1} and ledger.first_done is None  # worker 1 owes bucket 1 yet
    ledger.accept(grads([(1, 2)], [2], sums, rank=1, bucket=1))  # its job's last bucket: it is done
    assert ledger.computing() == {0} and ledger.first_done == ledger.came_in[1]
    first = ledger.first_done
    for bucket in (0, 1):
        ledger.accept(grads([(0, 1)], [2], sums, rank=0, bucket=bucket))
    assert ledger.computing() == set() and ledger.first_done == first  # the first, not the last
    ledger.start(4, {0: [(0, 2)]})
    assert ledger.computing() == {0} and ledger.first_done is None


def test_checks_and_sums_answers_in_the_fixed_tree():
    rng = np.random.default_rng(0)
    leaves = {(k, k + 1): [rng.standard_normal(7).astype(np.float32)] for k in range(4)}
    ledger = StepLedger(4, BUCKETS)
    ledger.start(10, {0: [(0, 2)], 1: [(2, 3), (3, 4)]})  # 10 samples: shards of 3, 3, 2, 2
    assert ledger.counts([(0, 2), (2, 3)]) == [6, 2]
    left = [a.copy() for a in tree_sum((0, 2), leaves, {})]
    assert "not owed by worker 1" in ledger.check(1, grads([(0, 2)], [6], left, 1))
    assert "sample counts [5]" in ledger.check(0, grads([(0, 2)], [5], left))
    assert "2 arrays, expected 1" in ledger.check(0, grads([(0, 2)], [6], left * 2))
    assert "not a node" in ledger.check(0, grads([(0, 3)], [8], left))
    assert "bucket 2, but there are 2" in ledger.check(0, grads([(0, 2)], [6], left, bucket=2))
    for bucket in (0, 1):
        ok = grads([(0, 2)], [6], left, bucket=bucket)
        assert ledger.check(0, ok) is None
        assert ledger.accept(ok) == bucket
        assert "a duplicate" in ledger.check(0, ok)
        assert not ledger.complete(bucket)
        right = grads([(2, 3), (3, 4)], [2, 2], [*leaves[(2, 3)], *leaves[(3, 4)]], 1, bucket=bucket)
        assert ledger.check(1, right) is None
        ledger.accept(right)
        assert ledger.complete(bucket)
        want = tree_sum((0, 4), leaves, {})
        assert ledger.gradient(bucket).tobytes() == want[0].tobytes()
        ledger.updated.add(bucket)
        assert not ledger.complete(bucket)
    assert ledger.finished and len(ledger.answers) == 2  # the answers of the last bucket
    assert ledger.ready == [1.5, 1.5]
