"""StepLedger: one step's bookkeeping on the server: who owes which bucket of which tree node, and
what has come in."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from numpy_cnn.shards import Node, cover, shard_bounds, tree_sum

from .protocol import Message
from .ranks import parse_nodes

Owed = list[tuple[tuple[int, ...], list[Node]]]  # (buckets, nodes that owe exactly those buckets)


class StepLedger:
    """For every bucket, the nodes of the shard tree still owed this step (by a rank, or by nobody:
    orphans) and the gradient sums that have arrived for the others; which buckets the server
    has updated; and the answers that finished a node (its last bucket), for the statistics."""

    def __init__(self, shards: int, buckets: list[list[int]]) -> None:
        self.shards = shards
        self.buckets = buckets  # parameter indices of each bucket (numpy_cnn.buckets.plan)
        self.last = len(buckets) - 1  # the bucket every job ends with: its answer carries the stats
        self.owner: list[dict[Node, int | None]] = [{} for _ in buckets]  # still owed -> rank
        self.parts: list[dict[Node, Sequence[np.ndarray]]] = [{} for _ in buckets]  # [flat sum]
        self.arrived: list[list[Message]] = [[] for _ in buckets]  # the answers that brought them
        self.updated: set[int] = set()  # buckets the server has updated this step
        self.answers: list[Message] = []  # accepted answers of the last bucket
        self.first_done: float | None = None  # when the first of them came (monotonic)
        self.ready: list[float] = [0.0] * len(buckets)  # when each bucket's last sum was ready
        self.came_in: list[float] = [0.0] * len(buckets)  # when it was all in, on the server's clock
        self.bounds: list[tuple[int, int]] = []  # the micro-shards' sample ranges in this batch
        self.scratch: list[dict] = [{} for _ in buckets]  # the tree's inner sums, reused every step

    def start(self, batch_length: int, work: dict[int, list[Node]]) -> None:
        """A new step over a batch of `batch_length` samples; `work` says who computes what (empty:
        nobody can yet, and every node waits for the first worker to be ready)."""
        self.answers, self.updated, self.first_done = [], set(), None
        self.ready = [0.0] * len(self.buckets)
        self.came_in = [0.0] * len(self.buckets)
        self.bounds = shard_bounds(batch_length, self.shards)
        owner = {node: rank for rank, nodes in work.items() for node in nodes}
        if not work:
            owner = dict.fromkeys(cover(0, self.shards, self.shards))
        self.owner = [dict(owner) for _ in self.buckets]
        self.parts = [{} for _ in self.buckets]
        self.arrived = [[] for _ in self.buckets]

    def complete(self, bucket: int) -> bool:
        """Every node of `bucket` is in, and the server has not updated it yet."""
        return not self.owner[bucket] and bucket not in self.updated

    @property
    def finished(self) -> bool:
        """Every bucket of the step is updated."""
        return len(self.updated) == len(self.buckets)

    def owed_by(self, rank: int | None) -> Owed:
        """What `rank` still owes (None: the orphans nobody is computing), grouped by the buckets
        each node owes; a job is one such group."""
        owes: dict[Node, list[int]] = {}
        for b, owner in enumerate(self.owner):
            for node, r in owner.items():
                if r == rank:
                    owes.setdefault(node, []).append(b)
        groups: dict[tuple[int, ...], list[Node]] = {}
        for node, bs in owes.items():
            groups.setdefault(tuple(bs), []).append(node)
        return [(bs, sorted(nodes)) for bs, nodes in groups.items()]

    def computing(self) -> set[int]:
        """The ranks that still owe something this step."""
        return {rank for owner in self.owner for rank in owner.values() if rank is not None}

    def assign(self, buckets: Sequence[int], nodes: Sequence[Node], rank: int | None) -> None:
        for b in buckets:
            self.owner[b].update(dict.fromkeys(nodes, rank))

    def release(self, buckets: Sequence[int], nodes: Sequence[Node]) -> None:
        """Nobody owes these buckets of `nodes` any more: they are about to be handed out again,
        perhaps re-cut into other nodes of the tree over the same shards."""
        for b in buckets:
            for node in nodes:
                self.owner[b].pop(node, None)

    def counts(self, nodes: Sequence[Node]) -> list[int]:
        """Samples under each node in this step's batch."""
        return [self.bounds[hi - 1][1] - self.bounds[lo][0] for lo, hi in nodes]

    def check(self, rank: int, msg: Message) -> str | None:
        """Why GRADS `msg` from `rank` does not answer what it owes, or None if it does."""
        b = msg["bucket"]
        if not 0 <= b < len(self.buckets):
            return f"bucket {b}, but there are {len(self.buckets)}"
        try:
            nodes = parse_nodes(msg["nodes"], self.shards)
        except ValueError as e:
            return str(e)
        stray = [node for node in nodes if self.owner[b].get(node, -1) != rank]
        if stray:
            return (
                f"bucket {b} of micro-shard nodes {stray} is not owed by worker {rank} "
                "(a duplicate, or not its work)"
            )
        counts = self.counts(nodes)
        if msg["counts"] != counts:
            return f"sample counts {msg['counts']}, expected {counts}"
        if len(msg.arrays) != len(nodes):  # the bucket's sum over each node, flat
            return f"{len(msg.arrays)} arrays, expected {len(nodes)}"
        return None

    def accept(self, msg: Message) -> int:
        """Take the node sums of a checked GRADS message; returns its bucket."""
        b = msg["bucket"]
        for (lo, hi), array in zip(msg["nodes"], msg.arrays):
            del self.owner[b][(lo, hi)]
            self.parts[b][(lo, hi)] = [array]
        self.arrived[b].append(msg)
        self.ready[b] = max(self.ready[b], msg["started"] + msg["compute_s"])
        self.came_in[b] = time.monotonic()
        if b == self.last:
            self.answers.append(msg)
            if self.first_done is None:
                self.first_done = self.came_in[b]
        return b

    def gradient(self, bucket: int) -> np.ndarray:
        """The whole batch's gradient of `bucket` (flat): the arrived parts added up the fixed tree."""
        (total,) = tree_sum((0, self.shards), self.parts[bucket], self.scratch[bucket])
        return total

    def nonfinite_ranks(self, bucket: int) -> list[int]:
        """The ranks whose sums of `bucket` hold a NaN or an Inf."""
        return sorted(
            {m["rank"] for m in self.arrived[bucket] if not all(np.isfinite(a).all() for a in m.arrays)}
        )
