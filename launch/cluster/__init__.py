"""Which node of a multi-node job this is, read from the flags or from the system that started it.

One small class per cluster system (systems.py), each with `detect(env) -> bool` and
`spec(env, flags) -> NodeSpec`. `detect(env, flags)` tries them in `SYSTEMS` order, after the
explicit flags, and the first that applies wins. Whatever the system, a flag (--nnodes,
--node-rank, --master-addr, --master-port) beats the variable it would replace. Each system
expects one `launch` per node: node 0 runs the parameter server and every node starts its share
of the workers (`node_ranks`). A job of one node needs nothing from the network: it listens on
127.0.0.1, on any free port unless --master-port says otherwise.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Mapping
from typing import Any

from .spec import FLAGS, ClusterError, NodeSpec
from .systems import SYSTEMS, Flags, IndexedJob, OpenMPI, PyTorchJob, SingleNode, Slurm, Torchrun

__all__ = [
    "SYSTEMS",
    "ClusterError",
    "Flags",
    "IndexedJob",
    "NodeSpec",
    "OpenMPI",
    "PyTorchJob",
    "SingleNode",
    "Slurm",
    "Torchrun",
    "add_arguments",
    "detect",
    "node_ranks",
    "resolve",
]


def detect(env: Mapping[str, str], flags: object | None = None) -> NodeSpec:
    """The NodeSpec of the first system that applies: the flags, then each of SYSTEMS in order."""
    for system in (Flags(flags), *SYSTEMS):
        if system.detect(env):
            return system.spec(env, flags)
    raise AssertionError("SingleNode always applies")


def resolve(spec: NodeSpec) -> str:
    """master_addr as an IP address, looked up once so that every connection reaches the same machine.

    IPv4 comes first when a name has both: the job's ZeroMQ sockets don't enable IPv6.
    """
    where = spec.origin.get("master_addr", spec.source)
    try:
        found = socket.getaddrinfo(spec.master_addr, spec.master_port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ClusterError(
            f"master address {spec.master_addr!r} (from {where}) does not resolve: {e}"
        ) from None
    found.sort(key=lambda info: info[0] != socket.AF_INET)  # stable: keeps the resolver's order otherwise
    return found[0][4][0]


def node_ranks(spec: NodeSpec, workers: int) -> range:
    """The worker ranks this node starts: R·W/N .. (R+1)·W/N - 1 of W workers on N nodes."""
    if workers < spec.nnodes or workers % spec.nnodes:
        raise ClusterError(
            f"--workers {workers} cannot be shared evenly by {spec.nnodes} nodes "
            f"(from {spec.origin.get('nnodes', spec.source)}): give a multiple of {spec.nnodes}"
        )
    per_node = workers // spec.nnodes
    return range(spec.node_rank * per_node, (spec.node_rank + 1) * per_node)


def add_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """torchrun's four flags (and its underscore spellings) on `parser` or an argument group."""
    helps = {
        "nnodes": "nodes in the job, one launch each (default: from the cluster's variables, else 1)",
        "node_rank": "this node's rank, 0 .. NNODES-1; node 0 runs the server (default: from the cluster)",
        "master_addr": "host name or address of node 0 (default: from the cluster, or MASTER_ADDR)",
        "master_port": "port of the server on node 0 (default: from the cluster, or MASTER_PORT)",
    }
    for dest, flag in FLAGS.items():
        underscored = "--" + dest
        names = [flag] if underscored == flag else [flag, underscored]
        parser.add_argument(*names, dest=dest, metavar=dest.upper(), default=None, help=helps[dest])
