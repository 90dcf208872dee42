"""StepLedger: one step's bookkeeping on the server: who owes which tree node, and what has come in."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from numpy_cnn.shards import Node, cover, shard_bounds, tree_sum

from .protocol import Message
from .ranks import parse_nodes


class StepLedger:
    """The nodes of the shard tree still owed this step (by a rank, or by nobody: orphans), the
    gradient sums that have arrived for the others, and the answers that carried them."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.owner: dict[Node, int | None] = {}  # node still owed -> rank computing it (None: nobody)
        self.parts: dict[Node, Sequence[np.ndarray]] = {}
        self.answers: list[Message] = []
        self.bounds: list[tuple[int, int]] = []  # the micro-shards' sample ranges in this batch
        self.scratch: dict[Node, list[np.ndarray]] = {}  # the tree's inner sums, reused every step

    def start(self, batch_length: int, work: dict[int, list[Node]]) -> None:
        """A new step over a batch of `batch_length` samples; `work` says who computes what (empty:
        nobody can yet, and every node waits for the first worker to be ready)."""
        self.parts, self.answers = {}, []
        self.bounds = shard_bounds(batch_length, self.shards)
        self.owner = {node: rank for rank, nodes in work.items() for node in nodes}
        if not work:
            self.owner = dict.fromkeys(cover(0, self.shards, self.shards))

    @property
    def complete(self) -> bool:
        return not self.owner

    def owed_by(self, rank: int | None) -> list[Node]:
        """The nodes `rank` still owes (None: the orphans nobody is computing)."""
        return [node for node, owner in self.owner.items() if owner == rank]

    def assign(self, nodes: Sequence[Node], rank: int | None) -> None:
        self.owner.update(dict.fromkeys(nodes, rank))

    def release(self, nodes: Sequence[Node]) -> None:
        """Nobody owes `nodes` any more: they are about to be handed out again, perhaps re-cut
        into other nodes of the tree over the same shards."""
        for node in nodes:
            self.owner.pop(node, None)

    def counts(self, nodes: Sequence[Node]) -> list[int]:
        """Samples under each node in this step's batch."""
        return [self.bounds[hi - 1][1] - self.bounds[lo][0] for lo, hi in nodes]

    def check(self, rank: int, msg: Message, n_params: int) -> str | None:
        """Why GRADS `msg` from `rank` does not answer what it owes, or None if it does."""
        try:
            nodes = parse_nodes(msg["nodes"], self.shards)
        except ValueError as e:
            return str(e)
        stray = [node for node in nodes if self.owner.get(node, -1) != rank]
        if stray:
            return f"micro-shard nodes {stray} are not owed by worker {rank} (a duplicate, or not its work)"
        counts = self.counts(nodes)
        if msg["counts"] != counts:
            return f"sample counts {msg['counts']}, expected {counts}"
        if len(msg.arrays) != len(nodes) * n_params:
            return f"{len(msg.arrays)} arrays, expected {len(nodes) * n_params}"
        return None

    def accept(self, msg: Message, n_params: int) -> None:
        """Take the node sums of a checked GRADS message."""
        for j, (lo, hi) in enumerate(msg["nodes"]):
            del self.owner[(lo, hi)]
            self.parts[(lo, hi)] = msg.arrays[j * n_params : (j + 1) * n_params]
        self.answers.append(msg)

    def gradient(self) -> Sequence[np.ndarray]:
        """The whole batch's gradient: the arrived parts added up the fixed tree."""
        return tree_sum((0, self.shards), self.parts, self.scratch)
