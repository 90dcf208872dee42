"""What the server accepts as an answer: a GRADS message checked against the connection it came
on, the step, what its worker owes, and this net's shapes, before any of it is used.

A gradient that fails is rejected with the reason (the fuzz tests send every kind); the step goes
on with the answers that pass.
"""

from __future__ import annotations

import math
from typing import Any

from .protocol import Message
from .ranks import parse_nodes

Server = Any  # distributed.server.ParameterServer, which imports this module


def why_not(server: Server, peer: bytes, msg: Message) -> str | None:
    """Why this GRADS message is not an expected answer to the current step, or None if it is."""
    rank = server.ranks.get(peer)
    if rank is None:
        return "not a registered worker"
    if msg["rank"] != rank:
        return f"claims rank {msg['rank']} on the connection of rank {rank}"
    if msg["step"] != server.step or msg["version"] != server.version:
        return (
            f"step {msg['step']} version {msg['version']}, "
            f"expected step {server.step} version {server.version}"
        )
    if msg["shared"]:  # the sums are in its gradient file: read them where they lie
        if rank not in server.files.grads or msg.arrays:
            return "shared gradients from a worker that has no gradient file, or with arrays too"
        try:
            msg.arrays = server.files.sums(
                rank, msg["bucket"], parse_nodes(msg["nodes"], server.config.shards)
            )
        except ValueError as e:
            return str(e)
    reason = server.ledger.check(rank, msg)
    if reason is not None:
        return reason
    taken, buckets = msg["taken"], len(server.buckets)
    if len(taken) != buckets or not all(type(t) is float and t >= 0.0 for t in taken):
        return f"taken {taken!r:.200} is not {buckets} times, one per bucket"
    made = msg["prepared"]  # made after the job before, so before this one started
    if made and not (
        len(made) == 2
        and all(type(t) is float and 0.0 <= t < math.inf for t in made)
        and made[0] + made[1] <= msg["started"]
    ):
        return f"prepared {made!r:.200} is not [start, seconds] before the job started"
    shape, dtype = (server.layout.length(msg["bucket"]),), server.params[0].dtype
    for i, a in enumerate(msg.arrays):  # one flat array per node
        if a.shape != shape or a.dtype != dtype:
            return f"array {i} is {a.dtype} {a.shape}, expected {dtype} {shape}"
    return None
