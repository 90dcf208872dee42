"""Micro-shards of a global batch, the one fixed binary tree that sums their gradients, and the
step that computes them.

The tree over shards [0, S) never changes, so the sum has the same bits whoever computes which
part: a worker owning a contiguous run of shards pre-sums only whole subtrees of it (its `cover`),
and the server adds the subtrees it receives at exactly the nodes where they belong. Which worker
computes which nodes is numpy_cnn.distributed's business (ranks.py); serial training needs only
the tree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .loss import CrossEntropyLoss
from .models import build
from .net import Net
from .trace import OFF, Trace

Node = tuple[int, int]  # shards [lo, hi)


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Sample ranges of the `shards` micro-shards of an n-sample batch; sizes differ by at most 1."""
    base, extra = divmod(n, shards)
    starts = [k * base + min(k, extra) for k in range(shards + 1)]
    return list(zip(starts[:-1], starts[1:]))


def children(node: Node) -> tuple[Node, Node]:
    # split at the largest power of two below the size: aligned runs of 2^k shards are whole nodes
    lo, hi = node
    half = 1 << ((hi - lo - 1).bit_length() - 1)
    return (lo, lo + half), (lo + half, hi)


def tree_nodes(shards: int) -> list[Node]:
    """Every node of the tree over [0, shards), root first, then depth first, left before right."""
    nodes, todo = [], [(0, shards)]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if node[1] - node[0] > 1:
            left, right = children(node)
            todo += [right, left]
    return nodes


def cover(lo: int, hi: int, shards: int) -> list[Node]:
    """The fewest tree nodes that exactly cover shards [lo, hi), left to right."""
    if not 0 <= lo < hi <= shards:
        raise ValueError(f"[{lo}, {hi}) is not a non-empty range of [0, {shards})")

    def walk(node: Node) -> list[Node]:
        a, b = node
        if lo <= a and b <= hi:
            return [node]
        if b <= lo or hi <= a:
            return []
        left, right = children(node)
        return walk(left) + walk(right)

    return walk((0, shards))


def tree_sum(
    node: Node,
    parts: Mapping[Node, Sequence[np.ndarray]],
    scratch: dict[Node, list[np.ndarray]],
) -> Sequence[np.ndarray]:
    """The arrays of `node`: given in `parts`, or the sum of its two children's, in `scratch`.

    `parts` must cover the node exactly; `scratch` keeps one buffer per inner node, so summing
    the same tree again allocates nothing.
    """
    if node in parts:
        return parts[node]
    if node[1] - node[0] == 1:
        raise KeyError(f"shard {node[0]} is missing from the parts")
    left, right = children(node)
    a, b = tree_sum(left, parts, scratch), tree_sum(right, parts, scratch)
    out = scratch.get(node)
    if out is None:
        out = scratch[node] = [np.empty_like(x) for x in a]
    for x, y, o in zip(a, b, out):
        np.add(x, y, out=o)
    return out


def leaves_of(nodes: Sequence[Node]) -> list[int]:
    return sorted(k for lo, hi in nodes for k in range(lo, hi))


def shard_gradient(
    net: Net,
    loss_f: CrossEntropyLoss,
    x: np.ndarray,
    y: np.ndarray,
    total: int,
    noise: tuple[int, int, int, int] | None = None,
    trace: Trace = OFF,
) -> tuple[float, int]:
    """Forward and backward on one micro-shard of a `total`-sample batch: fills net's gradients
    with those of (sum of the shard's losses) / total, so the shards' gradients add up to the
    batch's mean gradient. Returns (sum of losses, correct count).

    `noise` is (seed, epoch, index, offset): global batch `index` of `epoch`, the shard's first row
    in it. It keys the random draws (Dropout's masks) by the samples' places in the global batch,
    so they are the same whichever worker computes the shard (Net.set_noise).
    """
    if noise is not None:
        net.set_noise(*noise)
    if len(y) == 0:  # a short last batch can leave a micro-shard empty
        for p in net.parameters:
            p.grad.fill(0)
        return 0.0, 0
    trace.phase("forward")
    preds = net.forward(x)
    loss = loss_f.loss(preds, y) * len(y)
    trace.phase("backward")
    net.backward(loss_f.grad(preds, y, total=total))
    return loss, int(np.sum(preds.argmax(axis=1) == y))


class ShardedStep:
    """Forward and backward of one batch as `shards` micro-shards on a thread pool.

    Each micro-shard has its own replica of the net (sharing the weight arrays, owning its
    gradients and caches) and one BLAS thread, so its gradient has the same bits whichever thread
    computes it; the shards' gradients are added in the fixed tree. With the same --shards,
    serial training and `launch` therefore produce the same weights bit for bit.
    """

    def __init__(self, config, net: Net, trace: Trace = OFF, data=None) -> None:
        self.net, self.shards, self.trace = net, config.n_shards, trace
        self.loss = CrossEntropyLoss()
        self.replicas = [net]
        if self.shards > 1:
            self.replicas = [
                build(config.model, seed=config.seed, dtype=config.dtype, data=data)
                for _ in range(self.shards)
            ]
            for replica in self.replicas:
                for rp, p in zip(replica.parameters, net.parameters):
                    rp.data = p.data  # the optimizer updates these arrays in place: replicas follow
        threads = config.threads or min(os.cpu_count() or 1, self.shards)
        self.pool = ThreadPoolExecutor(threads) if threads > 1 and self.shards > 1 else None
        self.scratch: dict[Node, list[np.ndarray]] = {}

    def _leaf(
        self, k: int, x: np.ndarray, y: np.ndarray, bounds: list, key: tuple[int, int, int] | None
    ) -> tuple[float, int]:
        lo, hi = bounds[k]
        noise = None if key is None else (*key, lo)
        with self.trace.span("micro-shard", shard=k):  # forward and backward inside
            return shard_gradient(self.replicas[k], self.loss, x[lo:hi], y[lo:hi], len(y), noise, self.trace)

    def __call__(
        self, x: np.ndarray, y: np.ndarray, key: tuple[int, int, int] | None = None
    ) -> tuple[float, int]:
        """Fill the net's gradients for batch (x, y); returns (sum of losses, correct count).

        `key` is (seed, epoch, index) of the global batch: it keys Dropout's masks by sample.
        """
        bounds = shard_bounds(len(y), self.shards)
        leaves = range(self.shards)
        run = self.pool.map if self.pool is not None else map
        results = list(run(lambda k: self._leaf(k, x, y, bounds, key), leaves))
        if self.shards > 1:
            self.trace.phase("tree sum")
            parts = {(k, k + 1): [p.grad for p in self.replicas[k].parameters] for k in leaves}
            for p, g in zip(self.net.parameters, tree_sum((0, self.shards), parts, self.scratch)):
                p.grad = g
        return sum(r[0] for r in results), sum(r[1] for r in results)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
