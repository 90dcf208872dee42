"""Micro-shards of a global batch, and the one fixed binary tree that sums their gradients.

The tree over shards [0, S) never changes, so the sum has the same bits whoever computes which
part: a worker owning a contiguous run of shards pre-sums only whole subtrees of it (its `cover`),
and the server adds the subtrees it receives at exactly the nodes where they belong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Node = tuple[int, int]  # shards [lo, hi)


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Sample ranges of the `shards` micro-shards of an n-sample batch; sizes differ by at most 1."""
    base, extra = divmod(n, shards)
    starts = [k * base + min(k, extra) for k in range(shards + 1)]
    return list(zip(starts[:-1], starts[1:]))


def worker_shards(rank: int, workers: int, shards: int) -> Node:
    """The contiguous shard ids [lo, hi) that worker `rank` computes."""
    if shards % workers:
        raise ValueError(f"{shards} shards cannot be split evenly over {workers} workers")
    if not 0 <= rank < workers:
        raise ValueError(f"rank {rank} is not in [0, {workers})")
    per = shards // workers
    return rank * per, (rank + 1) * per


def children(node: Node) -> tuple[Node, Node]:
    # split at the largest power of two below the size: aligned runs of 2^k shards are whole nodes
    lo, hi = node
    half = 1 << ((hi - lo - 1).bit_length() - 1)
    return (lo, lo + half), (lo + half, hi)


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
