"""A node's place in a job (NodeSpec), and reading each of its fields from a flag or a variable."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FLAGS = {
    "nnodes": "--nnodes",
    "node_rank": "--node-rank",
    "master_addr": "--master-addr",
    "master_port": "--master-port",
}
LABELS = {
    "nnodes": "node count",
    "node_rank": "node rank",
    "master_addr": "master address",
    "master_port": "master port",
}
LOCALHOST = "127.0.0.1"


class ClusterError(ValueError):
    """A flag or cluster variable that is missing, malformed or inconsistent with the others."""


@dataclass(frozen=True)
class NodeSpec:
    """This node's place in the job: the node count, its rank, where node 0 listens, and whence each came."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int | None  # None: any free port (a job of one node only)
    source: str  # e.g. "Slurm: SLURM_NNODES, SLURM_NODEID, first host of SLURM_JOB_NODELIST, ..."
    origin: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)  # field -> source


# --- reading a field from a flag or a variable ----------------------------------------------


class Reader:
    """Reads each field from its flag, else from the first variable present, and notes which it was."""

    def __init__(self, system: str, env: Mapping[str, str], flags: object | None) -> None:
        self.system, self.env, self.flags = system, env, flags
        self.origin: dict[str, str] = {}  # field -> the flag or variable it came from
        self.tried: dict[str, list[str]] = {}  # field -> the variables looked at, for the error

    def get(self, key: str, names: Sequence[str], parse: Callable[[str, Any], Any]) -> Any:
        self.tried[key] = [*self.tried.get(key, ()), *names]
        value = flag(self.flags, key)
        if value is not None:
            self.origin[key] = FLAGS[key]
            return parse(FLAGS[key], value)
        for name in names:
            if name in self.env:
                self.origin[key] = name
                return parse(name, self.env[name])
        return None

    def need(self, key: str, names: Sequence[str], parse: Callable[[str, Any], Any], why: str = "") -> Any:
        value = self.get(key, names, parse)
        if value is None:
            self.missing(key, why)
        return value

    def derive(self, key: str, names: Sequence[str], parse: Callable[[str, Any], Any], how: str) -> Any:
        """A value computed from the first variable present, when neither flag nor variable gives it."""
        self.tried[key] = [*self.tried.get(key, ()), *names]
        for name in names:
            if name in self.env:
                self.origin[key] = how.format(name)
                return parse(name, self.env[name])
        self.missing(key)

    def missing(self, key: str, why: str = "") -> None:
        names = self.tried.get(key)
        where = f"pass {FLAGS[key]}" + (f" or set {' or '.join(names)}" if names else "")
        raise ClusterError(f"{self.system}: no {LABELS[key]}: {where}" + (f"; {why}" if why else ""))

    def single(self, why: str = "one node") -> NodeSpec:
        """A job of one node: rank, address and port from the flags only, else 0, 127.0.0.1 and any port."""
        self.origin.setdefault("nnodes", why)
        rank = self.get("node_rank", (), as_rank)
        addr = self.get("master_addr", (), as_host)
        port = self.get("master_port", (), as_port)
        return self.finish(1, 0 if rank is None else rank, addr or LOCALHOST, port)

    def finish(self, nnodes: int, rank: int, addr: str, port: int | None) -> NodeSpec:
        if rank >= nnodes:
            raise ClusterError(
                f"node rank {rank} (from {self.origin.get('node_rank')}) is not below the node count "
                f"{nnodes} (from {self.origin['nnodes']})"
            )
        parts = [self.origin[key] for key in FLAGS if key in self.origin]
        return NodeSpec(nnodes, rank, addr, port, f"{self.system}: {', '.join(parts)}", dict(self.origin))


def flag(flags: object | None, key: str) -> Any:
    return getattr(flags, key, None)


def _int(where: str, value: Any, least: int) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"-?[0-9]+", text):  # int() would take "1_0", "٣"
        raise ClusterError(f"{where}={value!r} is not an integer")
    if int(text) < least:
        raise ClusterError(
            f"{where}={value!r} is {'negative' if int(text) < 0 else 'too small'}: "
            f"it must be at least {least}"
        )
    return int(text)


def as_count(where: str, value: Any) -> int:
    return _int(where, value, 1)


def as_rank(where: str, value: Any) -> int:
    return _int(where, value, 0)


def as_port(where: str, value: Any) -> int:
    port = _int(where, value, 1)
    if port > 65535:
        raise ClusterError(f"{where}={value!r} is not a port: ports go from 1 to 65535")
    return port


def as_host(where: str, value: Any) -> str:
    host = str(value).strip()
    if not host or any(c.isspace() for c in host):
        raise ClusterError(f"{where}={value!r} is not a host name or address")
    return host
