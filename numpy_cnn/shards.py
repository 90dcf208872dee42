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


def leaves_of(nodes: Sequence[Node]) -> list[int]:
    return sorted(k for lo, hi in nodes for k in range(lo, hi))


def cover_leaves(leaves: Sequence[int], shards: int) -> list[Node]:
    """The fewest tree nodes covering exactly these shard ids (sorted, distinct), left to right."""
    nodes: list[Node] = []
    start = 0
    for i in range(1, len(leaves) + 1):
        if i == len(leaves) or leaves[i] != leaves[i - 1] + 1:  # the end of a contiguous run
            nodes.extend(cover(leaves[start], leaves[i - 1] + 1, shards))
            start = i
    return nodes


def share(nodes: Sequence[Node], ranks: Sequence[int], shards: int) -> dict[int, list[Node]]:
    """Split the shards under `nodes` into len(ranks) contiguous, near-equal runs, one per rank.

    Any split gives the same sum: every piece is a node of the one tree.
    """
    if not ranks:
        return {}
    leaves = leaves_of(nodes)
    bounds = shard_bounds(len(leaves), len(ranks))
    out = {r: cover_leaves(leaves[lo:hi], shards) for r, (lo, hi) in zip(ranks, bounds)}
    return {r: n for r, n in out.items() if n}


def plan(alive: Sequence[int], workers: int, shards: int) -> dict[int, list[Node]]:
    """Which nodes each live rank computes: its own shards, plus a share of the missing ranks'."""
    own = {r: cover(*worker_shards(r, workers, shards), shards) for r in range(workers)}
    result = {r: list(own[r]) for r in alive}
    missing = [node for r in range(workers) if r not in result for node in own[r]]
    for r, extra in share(missing, list(alive), shards).items():
        result[r] = sorted(result[r] + extra)
    return result


def parse_nodes(value: object, shards: int) -> list[Node]:
    """Nodes sent as [[lo, hi], ...]; ValueError unless they are distinct nodes of the tree."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"nodes {value!r} are not a non-empty list")
    nodes: list[Node] = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and all(type(x) is int for x in item)):
            raise ValueError(f"node {item!r} is not [lo, hi]")
        node = (item[0], item[1])
        if not _in_tree(node, (0, shards)):
            raise ValueError(f"[{node[0]}, {node[1]}) is not a node of the tree over {shards} shards")
        nodes.append(node)
    leaves = leaves_of(nodes)
    if len(set(leaves)) != len(leaves):
        raise ValueError(f"nodes {value!r} overlap")
    return nodes


def _in_tree(node: Node, root: Node) -> bool:
    if node == root:
        return True
    if root[1] - root[0] <= 1 or not (root[0] <= node[0] < node[1] <= root[1]):
        return False
    return any(_in_tree(node, child) for child in children(root))
