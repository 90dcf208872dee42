"""Which worker computes which micro-shards: each rank's own run of the tree, and the shares of
the missing ranks' runs that the live ones take over.

Any split gives the same sum, because every piece is a node of numpy_cnn.shards' one tree.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from numpy_cnn.shards import Node, cover, leaves_of, shard_bounds, tree_nodes


def worker_shards(rank: int, workers: int, shards: int) -> Node:
    """The contiguous shard ids [lo, hi) that worker `rank` computes."""
    if shards % workers:
        raise ValueError(f"{shards} shards cannot be split evenly over {workers} workers")
    if not 0 <= rank < workers:
        raise ValueError(f"rank {rank} is not in [0, {workers})")
    per = shards // workers
    return rank * per, (rank + 1) * per


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
    return {r: list(nodes) for r, nodes in _plan(tuple(alive), workers, shards).items()}


@functools.lru_cache(maxsize=64)  # the server plans every step, between the last update and the PARAMS
def _plan(alive: tuple[int, ...], workers: int, shards: int) -> dict[int, list[Node]]:
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
        if node not in _tree(shards):
            raise ValueError(f"[{node[0]}, {node[1]}) is not a node of the tree over {shards} shards")
        nodes.append(node)
    leaves = leaves_of(nodes)
    if len(set(leaves)) != len(leaves):
        raise ValueError(f"nodes {value!r} overlap")
    return nodes


@functools.lru_cache(maxsize=8)  # every PARAMS and GRADS names nodes: a set lookup each
def _tree(shards: int) -> frozenset[Node]:
    return frozenset(tree_nodes(shards))
