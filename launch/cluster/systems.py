"""One class per cluster system, each with `detect(env) -> bool` and `spec(env, flags) -> NodeSpec`."""

from __future__ import annotations

import re
from collections.abc import Mapping

from .. import hostlist
from .spec import ClusterError, NodeSpec, Reader, as_count, as_host, as_port, as_rank, flag

# Slurm jobs that share a node must not share a port: 20000 + job id % 10000 stays below Linux's
# ephemeral ports (32768 and up), so no outgoing connection holds it, and above most services'.
SLURM_PORT_BASE, SLURM_PORT_SPAN = 20000, 10000


class Flags:
    """The flags alone, when they say which node this is: --nnodes with --node-rank, or --nnodes 1."""

    name = "flags"

    def __init__(self, flags: object | None) -> None:
        self.flags = flags

    def detect(self, env: Mapping[str, str]) -> bool:
        nnodes, rank = flag(self.flags, "nnodes"), flag(self.flags, "node_rank")
        return nnodes is not None and (rank is not None or str(nnodes).strip() == "1")

    def spec(self, env: Mapping[str, str], flags: object | None) -> NodeSpec:
        r = Reader(self.name, env, flags)
        nnodes = r.need("nnodes", (), as_count)
        if nnodes == 1:
            return r.single()
        return r.finish(
            nnodes,
            r.need("node_rank", (), as_rank),
            r.need("master_addr", ("MASTER_ADDR",), as_host),
            r.need("master_port", ("MASTER_PORT",), as_port),
        )


class Torchrun:
    """torchrun's variables, which Kubeflow sets in pods that run torchrun: PET_NNODES, PET_NODE_RANK, ..."""

    name = "torchrun"

    def detect(self, env: Mapping[str, str]) -> bool:
        return "PET_NNODES" in env

    def spec(self, env: Mapping[str, str], flags: object | None) -> NodeSpec:
        r = Reader(self.name, env, flags)
        if ":" in env["PET_NNODES"] and flag(flags, "nnodes") is None:
            raise ClusterError(
                f"PET_NNODES={env['PET_NNODES']!r} is an elastic range; launch needs a fixed node count"
            )
        nnodes = r.need("nnodes", ("PET_NNODES",), as_count)
        if nnodes == 1:
            return r.single()
        return r.finish(
            nnodes,
            r.need("node_rank", ("PET_NODE_RANK",), as_rank),
            r.need("master_addr", ("PET_MASTER_ADDR", "MASTER_ADDR"), as_host),
            r.need("master_port", ("PET_MASTER_PORT", "MASTER_PORT"), as_port),
        )


class PyTorchJob:
    """Kubeflow's PyTorchJob, one launch per pod: WORLD_SIZE pods, this one RANK, node 0 at MASTER_ADDR."""

    name = "Kubeflow PyTorchJob"
    VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")

    def detect(self, env: Mapping[str, str]) -> bool:
        return all(name in env for name in self.VARS)

    def spec(self, env: Mapping[str, str], flags: object | None) -> NodeSpec:
        r = Reader(self.name, env, flags)
        # torchrun's children carry the same four; more than one of them per node is not one per pod
        _at_most_one("LOCAL_WORLD_SIZE", env, "start one launch per node (torchrun --nproc-per-node 1)")
        nnodes = r.need("nnodes", ("WORLD_SIZE",), as_count)
        if nnodes == 1:
            return r.single()
        return r.finish(
            nnodes,
            r.need("node_rank", ("RANK",), as_rank),
            r.need("master_addr", ("MASTER_ADDR",), as_host),
            r.need("master_port", ("MASTER_PORT",), as_port),
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
        r = Reader(self.name, env, flags)
        _at_most_one("SLURM_LOCALID", env, self.ONE_TASK, limit=0)  # the second task on a node
        nnodes = r.need("nnodes", self.NODES, as_count)
        if nnodes == 1:
            return r.single()
        self._one_task_per_node(env)
        rank = r.need("node_rank", ("SLURM_NODEID",), as_rank)
        addr = r.get("master_addr", ("MASTER_ADDR",), as_host)
        if addr is None:
            addr = r.derive(
                "master_addr",
                ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"),
                _first_host,
                "first host of {}",
            )
        port = r.get("master_port", ("MASTER_PORT",), as_port)
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
        if tasks and nodes and as_count(tasks, env[tasks]) > as_count(nodes, env[nodes]):
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
        r = Reader(self.name, env, flags)
        _at_most_one(
            "OMPI_COMM_WORLD_LOCAL_SIZE", env, "start one launch per node: mpirun --map-by ppr:1:node"
        )
        nnodes = r.need("nnodes", ("OMPI_COMM_WORLD_SIZE",), as_count)
        if nnodes == 1:
            return r.single()
        return r.finish(
            nnodes,
            r.need("node_rank", ("OMPI_COMM_WORLD_RANK",), as_rank),
            r.need("master_addr", ("MASTER_ADDR",), as_host, "MPI does not say where rank 0 runs"),
            r.need("master_port", ("MASTER_PORT",), as_port),
        )


class IndexedJob:
    """A Kubernetes Indexed Job: JOB_COMPLETION_INDEX is the node rank; the rest comes from flags."""

    name = "Kubernetes Indexed Job"

    def detect(self, env: Mapping[str, str]) -> bool:
        return "JOB_COMPLETION_INDEX" in env

    def spec(self, env: Mapping[str, str], flags: object | None) -> NodeSpec:
        r = Reader(self.name, env, flags)
        nnodes = r.need(
            "nnodes",
            (),
            as_count,
            "an Indexed Job gives each pod its index, not the node count (the Job's completions)",
        )
        if nnodes == 1:
            return r.single()
        return r.finish(
            nnodes,
            r.need("node_rank", ("JOB_COMPLETION_INDEX",), as_rank),
            r.need(
                "master_addr", ("MASTER_ADDR",), as_host, "e.g. the pod of index 0 through a headless Service"
            ),
            r.need("master_port", ("MASTER_PORT",), as_port),
        )


class SingleNode:
    """No cluster: one node, this one."""

    name = "single node"

    def detect(self, env: Mapping[str, str]) -> bool:
        return True

    def spec(self, env: Mapping[str, str], flags: object | None) -> NodeSpec:
        r = Reader(self.name, env, flags)
        nnodes = r.get("nnodes", (), as_count)
        if nnodes is not None and nnodes > 1:  # Flags would have taken it, had --node-rank been given
            raise ClusterError(
                f"--nnodes {nnodes} needs --node-rank: no cluster variables (PET_NODE_RANK, RANK, "
                "SLURM_NODEID, OMPI_COMM_WORLD_RANK, JOB_COMPLETION_INDEX) say which node this is"
            )
        return r.single("no --nnodes and no cluster variables")


SYSTEMS = (Torchrun(), PyTorchJob(), Slurm(), OpenMPI(), IndexedJob(), SingleNode())


def _first_host(where: str, value: str) -> str:
    try:
        return hostlist.first(value)
    except ValueError as e:
        raise ClusterError(f"{where}: {e}") from None


def _slurm_port(where: str, value: str) -> int:
    return SLURM_PORT_BASE + as_rank(where, value) % SLURM_PORT_SPAN


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
    if name in env and as_rank(name, env[name]) > limit:
        raise ClusterError(f"{name}={env[name]!r}: more than one launch on this node; {advice}")
