"""Which node of a multi-node job this is, read from the flags or from the system that started it.

One small class per cluster system, each with `detect(env) -> bool` and `spec(env, flags) ->
NodeSpec`. `detect(env, flags)` tries them in `SYSTEMS` order, after the explicit flags, and the
first that applies wins. Whatever the system, a flag (--nnodes, --node-rank, --master-addr,
--master-port) beats the variable it would replace. Each system expects one `launch` per node:
node 0 runs the parameter server and every node starts its share of the workers (`node_ranks`).
A job of one node needs nothing from the network: it listens on 127.0.0.1, on any free port
unless --master-port says otherwise.
"""

from __future__ import annotations

import argparse
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import hostlist

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
# Slurm jobs that share a node must not share a port: 20000 + job id % 10000 stays below Linux's
# ephemeral ports (32768 and up), so no outgoing connection holds it, and above most services'.
SLURM_PORT_BASE, SLURM_PORT_SPAN = 20000, 10000


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


# --- the systems ---------------------------------------------------------------------------------


class Flags:
    """The flags alone, when they say which node this is: --nnodes with --node-rank, or --nnodes 1."""

    name = "flags"

    def __init__(self, flags: object | None) -> None:
        self.flags = flags

    def detect(self, env: Mapping[str, str]) -> bool:
        nnodes, rank = _flag(self.flags, "nnodes"), _flag(self.flags, "node_rank")
        return nnodes is not None and (rank is not None or str(nnodes).strip() == "1")

    def spec(self, env: Mapping[str, str], flags: object | None) -> NodeSpec:
        r = _Reader(self.name, env, flags)
        nnodes = r.need("nnodes", (), _count)
        if nnodes == 1:
            return r.single()
        return r.finish(
            nnodes,
            r.need("node_rank", (), _rank),
            r.need("master_addr", ("MASTER_ADDR",), _host),
            r.need("master_port", ("MASTER_PORT",), _port),
        )


class Torchrun:
    """torchrun's variables, which Kubeflow sets in pods that run torchrun: PET_NNODES, PET_NODE_RANK, ..."""

    name = "torchrun"

    def detect(self, env: Mapping[str, str]) -> bool:
        return "PET_NNODES" in env

    def spec(self, env: Mapping[str, str], flags: object | None) -> NodeSpec:
        r = _Reader(self.name, env, flags)
        if ":" in env["PET_NNODES"] and _flag(flags, "nnodes") is None:
            raise ClusterError(
                f"PET_NNODES={env['PET_NNODES']!r} is an elastic range; launch needs a fixed node count"
            )
        nnodes = r.need("nnodes", ("PET_NNODES",), _count)
        if nnodes == 1:
            return r.single()
        return r.finish(
            nnodes,
            r.need("node_rank", ("PET_NODE_RANK",), _rank),
            r.need("master_addr", ("PET_MASTER_ADDR", "MASTER_ADDR"), _host),
            r.need("master_port", ("PET_MASTER_PORT", "MASTER_PORT"), _port),
        )


class PyTorchJob:
    """Kubeflow's PyTorchJob, one launch per pod: WORLD_SIZE pods, this one RANK, node 0 at MASTER_ADDR."""

    name = "Kubeflow PyTorchJob"
    VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")

    def detect(self, env: Mapping[str, str]) -> bool:
        return all(name in env for name in self.VARS)

    def spec(self, env: Mapping[str, str], flags: object | None) -> NodeSpec:
        r = _Reader(self.name, env, flags)
        # torchrun's children carry the same four; more than one of them per node is not one per pod
        _at_most_one("LOCAL_WORLD_SIZE", env, "start one launch per node (torchrun --nproc-per-node 1)")
        nnodes = r.need("nnodes", ("WORLD_SIZE",), _count)
        if nnodes == 1:
            return r.single()
        return r.finish(
            nnodes,
            r.need("node_rank", ("RANK",), _rank),
            r.need("master_addr", ("MASTER_ADDR",), _host),
            r.need("master_port", ("MASTER_PORT",), _port),
        )


class Slurm:
    """A Slurm job step started by `srun --ntasks-per-node=1 launch ...`.

    The step's own variables (SLURM_STEP_*) come first: a step may use fewer nodes than its job,
    and SLURM_NODEID counts within the step. Node 0 is the first host of the node list; the port
    is 20000 + SLURM_JOB_ID % 10000 unless --master-port or MASTER_PORT gives one. A one-node job
    is a single node whatever its task counts (`sbatch -n 8` on one node). Not caught: launch run
    straight from a multi-node batch script, without srun; node 0 then waits for nodes that never
    start.
    """

    name = "Slurm"
    ONE_TASK = "start one launch per node: srun --ntasks-per-node=1"
    NODES = ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    # (tasks on each node, tasks, nodes): the step's, and the job's for when srun set no step's
    STEP_COUNTS = ("SLURM_STEP_TASKS_PER_NODE", ("SLURM_STEP_NUM_TASKS",), ("SLURM_STEP_NUM_NODES",))
    JOB_COUNTS = ("SLURM_TASKS_PER_NODE", ("SLURM_NTASKS",), ("SLURM_NNODES", "SLURM_JOB_NUM_NODES"))

    def detect(self, env: Mapping[str, str]) -> bool:
        return "SLURM_NODEID" in env

    def spec(self, env: Mapping[str, str], flags: object | None) -> NodeSpec:
        r = _Reader(self.name, env, flags)
        _at_most_one("SLURM_LOCALID", env, self.ONE_TASK, limit=0)  # the second task on a node
        nnodes = r.need("nnodes", self.NODES, _count)
        if nnodes == 1:
            return r.single()
        self._one_task_per_node(env)
        rank = r.need("node_rank", ("SLURM_NODEID",), _rank)
        addr = r.get("master_addr", ("MASTER_ADDR",), _host)
        if addr is None:
            addr = r.derive(
                "master_addr",
                ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"),
                _first_host,
                "first host of {}",
            )
        port = r.get("master_port", ("MASTER_PORT",), _port)
        if port is None:
            port = r.derive(
                "master_port",
                ("SLURM_JOB_ID", "SLURM_JOBID"),
                _slurm_port,
                f"{SLURM_PORT_BASE} + {{}} % {SLURM_PORT_SPAN}",
            )
        return r.finish(nnodes, rank, addr, port)

    def _one_task_per_node(self, env: Mapping[str, str]) -> None:
        """More than one task per node would start the same workers twice: refuse."""
        step = "SLURM_STEP_TASKS_PER_NODE" in env  # then the step's own counts replace the job's
        per_node, task_names, node_names = self.STEP_COUNTS if step else self.JOB_COUNTS
        if not step:
            _at_most_one("SLURM_NTASKS_PER_NODE", env, self.ONE_TASK)
        if per_node in env and max(_tasks_per_node(per_node, env[per_node])) > 1:
            raise ClusterError(f"{per_node}={env[per_node]!r}: more than one task on a node; {self.ONE_TASK}")
        tasks = next((n for n in task_names if n in env), None)
        nodes = next((n for n in node_names if n in env), None)
        if tasks and nodes and _count(tasks, env[tasks]) > _count(nodes, env[nodes]):
            raise ClusterError(
                f"{tasks}={env[tasks]!r} tasks on {nodes}={env[nodes]!r} nodes: more than one task on a "
                f"node; {self.ONE_TASK}"
            )


class OpenMPI:
    """Open MPI's `mpirun --map-by ppr:1:node launch ...`; MPI does not say where rank 0 runs."""

    name = "Open MPI"

    def detect(self, env: Mapping[str, str]) -> bool:
        return "OMPI_COMM_WORLD_SIZE" in env

    def spec(self, env: Mapping[str, str], flags: object | None) -> NodeSpec:
        r = _Reader(self.name, env, flags)
        _at_most_one(
            "OMPI_COMM_WORLD_LOCAL_SIZE", env, "start one launch per node: mpirun --map-by ppr:1:node"
        )
        nnodes = r.need("nnodes", ("OMPI_COMM_WORLD_SIZE",), _count)
        if nnodes == 1:
            return r.single()
        return r.finish(
            nnodes,
            r.need("node_rank", ("OMPI_COMM_WORLD_RANK",), _rank),
            r.need("master_addr", ("MASTER_ADDR",), _host, "MPI does not say where rank 0 runs"),
            r.need("master_port", ("MASTER_PORT",), _port),
        )


class IndexedJob:
    """A Kubernetes Indexed Job: JOB_COMPLETION_INDEX is the node rank; the rest comes from flags."""

    name = "Kubernetes Indexed Job"

    def detect(self, env: Mapping[str, str]) -> bool:
        return "JOB_COMPLETION_INDEX" in env

    def spec(self, env: Mapping[str, str], flags: object | None) -> NodeSpec:
        r = _Reader(self.name, env, flags)
        nnodes = r.need(
            "nnodes",
            (),
            _count,
            "an Indexed Job gives each pod its index, not the node count (the Job's completions)",
        )
        if nnodes == 1:
            return r.single()
        return r.finish(
            nnodes,
            r.need("node_rank", ("JOB_COMPLETION_INDEX",), _rank),
            r.need(
                "master_addr", ("MASTER_ADDR",), _host, "e.g. the pod of index 0 through a headless Service"
            ),
            r.need("master_port", ("MASTER_PORT",), _port),
        )


class SingleNode:
    """No cluster: one node, this one."""

    name = "single node"

    def detect(self, env: Mapping[str, str]) -> bool:
        return True

    def spec(self, env: Mapping[str, str], flags: object | None) -> NodeSpec:
        r = _Reader(self.name, env, flags)
        nnodes = r.get("nnodes", (), _count)
        if nnodes is not None and nnodes > 1:  # Flags would have taken it, had --node-rank been given
            raise ClusterError(
                f"--nnodes {nnodes} needs --node-rank: no cluster variables (PET_NODE_RANK, RANK, "
                "SLURM_NODEID, OMPI_COMM_WORLD_RANK, JOB_COMPLETION_INDEX) say which node this is"
            )
        return r.single("no --nnodes and no cluster variables")


SYSTEMS = (Torchrun(), PyTorchJob(), Slurm(), OpenMPI(), IndexedJob(), SingleNode())


# --- reading values ------------------------------------------------------------------------------


class _Reader:
    """Reads each field from its flag, else from the first variable present, and notes which it was."""

    def __init__(self, system: str, env: Mapping[str, str], flags: object | None) -> None:
        self.system, self.env, self.flags = system, env, flags
        self.origin: dict[str, str] = {}  # field -> the flag or variable it came from
        self.tried: dict[str, list[str]] = {}  # field -> the variables looked at, for the error

    def get(self, key: str, names: Sequence[str], parse: Callable[[str, Any], Any]) -> Any:
        self.tried[key] = [*self.tried.get(key, ()), *names]
        value = _flag(self.flags, key)
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
        rank = self.get("node_rank", (), _rank)
        addr = self.get("master_addr", (), _host)
        port = self.get("master_port", (), _port)
        return self.finish(1, 0 if rank is None else rank, addr or LOCALHOST, port)

    def finish(self, nnodes: int, rank: int, addr: str, port: int | None) -> NodeSpec:
        if rank >= nnodes:
            raise ClusterError(
                f"node rank {rank} (from {self.origin.get('node_rank')}) is not below the node count "
                f"{nnodes} (from {self.origin['nnodes']})"
            )
        parts = [self.origin[key] for key in FLAGS if key in self.origin]
        return NodeSpec(nnodes, rank, addr, port, f"{self.system}: {', '.join(parts)}", dict(self.origin))


def _flag(flags: object | None, key: str) -> Any:
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


def _count(where: str, value: Any) -> int:
    return _int(where, value, 1)


def _rank(where: str, value: Any) -> int:
    return _int(where, value, 0)


def _port(where: str, value: Any) -> int:
    port = _int(where, value, 1)
    if port > 65535:
        raise ClusterError(f"{where}={value!r} is not a port: ports go from 1 to 65535")
    return port


def _host(where: str, value: Any) -> str:
    host = str(value).strip()
    if not host or any(c.isspace() for c in host):
        raise ClusterError(f"{where}={value!r} is not a host name or address")
    return host


def _first_host(where: str, value: str) -> str:
    try:
        return hostlist.first(value)
    except ValueError as e:
        raise ClusterError(f"{where}: {e}") from None


def _slurm_port(where: str, value: str) -> int:
    return SLURM_PORT_BASE + _rank(where, value) % SLURM_PORT_SPAN


def _tasks_per_node(where: str, value: str) -> list[int]:
    """Slurm's compressed counts: '2(x3),1' -> [2, 2, 2, 1]."""
    counts = []
    for item in value.split(","):
        m = re.fullmatch(r"\s*([0-9]+)\s*(?:\(x([0-9]+)\))?\s*", item)
        if m is None:
            raise ClusterError(f"{where}={value!r} is not a list of task counts like 1(x4) or 2,1")
        counts += [int(m[1])] * int(m[2] or 1)
    return counts


def _at_most_one(name: str, env: Mapping[str, str], advice: str, limit: int = 1) -> None:
    """Refuse a variable that says more than one launch runs on this node (at most `limit`)."""
    if name in env and _rank(name, env[name]) > limit:
        raise ClusterError(f"{name}={env[name]!r}: more than one launch on this node; {advice}")
