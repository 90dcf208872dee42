"""Cluster detection from dictionaries of environment variables: every system, precedence, each error."""

from __future__ import annotations

import argparse
import ipaddress
from types import SimpleNamespace

import pytest

from numpy_cnn.launch.cluster import ClusterError, NodeSpec, add_arguments, detect, node_ranks, resolve


def flags(**values) -> SimpleNamespace:
    """What argparse gives `launch` when none of the four flags is on the command line, updated."""
    return SimpleNamespace(
        **{"nnodes": None, "node_rank": None, "master_addr": None, "master_port": None, **values}
    )


def fails(env: dict, words: list[str], **flag_values) -> None:
    with pytest.raises(ClusterError) as e:
        detect(env, flags(**flag_values))
    for word in words:
        assert word in str(e.value), f"{word!r} not in {str(e.value)!r}"


def same(spec: NodeSpec, nnodes: int, rank: int, addr: str, port: int | None) -> bool:
    return (spec.nnodes, spec.node_rank, spec.master_addr, spec.master_port) == (nnodes, rank, addr, port)


SLURM = {  # node 1 of `srun --ntasks-per-node=1` in a 4-node job, as slurmstepd sets it
    "SLURM_JOB_ID": "123456",
    "SLURM_NODEID": "1",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
    "SLURM_NNODES": "4",
    "SLURM_JOB_NUM_NODES": "4",
    "SLURM_JOB_NODELIST": "gpu[07-08,10],login-a",
    "SLURM_NTASKS": "4",
    "SLURM_TASKS_PER_NODE": "1(x4)",
}
TORCHRUN = {
    "PET_NNODES": "3",
    "PET_NODE_RANK": "2",
    "PET_MASTER_ADDR": "job-master-0",
    "PET_MASTER_PORT": "23456",
}
PYTORCHJOB = {"MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "3", "RANK": "1"}
MPI = {"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "1"}
INDEXED = {"JOB_COMPLETION_INDEX": "2"}


# --- no cluster, and the flags alone -----------------------------------------------------------


def test_no_cluster_is_one_node_on_localhost_with_any_port() -> None:
    for env in ({}, {"HOME": "/root", "MASTER_ADDR": "elsewhere", "MASTER_PORT": "1234"}):
        spec = detect(env, flags())
        assert same(spec, 1, 0, "127.0.0.1", None) and spec.source.startswith("single node")
    assert same(detect({}, None), 1, 0, "127.0.0.1", None)  # no flags object at all
    assert same(detect({}, flags(master_port=5555)), 1, 0, "127.0.0.1", 5555)


def test_flags_alone() -> None:
    spec = detect({}, flags(nnodes=2, node_rank=1, master_addr="node0", master_port=29500))
    assert same(spec, 2, 1, "node0", 29500)
    assert spec.source == "flags: --nnodes, --node-rank, --master-addr, --master-port"
    # as strings too, for a parser that leaves them untyped
    spec = detect({}, flags(nnodes="2", node_rank="0", master_addr=" node0 ", master_port="29500"))
    assert same(spec, 2, 0, "node0", 29500)


def test_flags_take_the_address_from_master_addr_and_port_when_not_given() -> None:
    spec = detect({"MASTER_ADDR": "node0", "MASTER_PORT": "4000"}, flags(nnodes=2, node_rank=1))
    assert same(spec, 2, 1, "node0", 4000)
    assert spec.source == "flags: --nnodes, --node-rank, MASTER_ADDR, MASTER_PORT"


def test_flags_beat_every_cluster() -> None:
    given = {"nnodes": 2, "node_rank": 1, "master_addr": "mine", "master_port": 1111}
    for env in (SLURM, TORCHRUN, PYTORCHJOB, MPI, INDEXED):
        spec = detect(env, flags(**given))
        assert same(spec, 2, 1, "mine", 1111) and spec.source.startswith("flags:"), env


def test_nnodes_1_is_this_node_alone_even_inside_a_cluster() -> None:
    for env in ({}, SLURM, MPI):
        spec = detect(env, flags(nnodes=1))
        assert same(spec, 1, 0, "127.0.0.1", None) and spec.source == "flags: --nnodes"


def test_one_flag_replaces_one_variable() -> None:
    spec = detect(SLURM, flags(master_port=7000))
    assert same(spec, 4, 1, "gpu07", 7000) and "--master-port" in spec.source
    spec = detect(SLURM, flags(master_addr="gpu08-ib"))
    assert same(spec, 4, 1, "gpu08-ib", 23456)
    spec = detect(TORCHRUN, flags(node_rank=0))
    assert same(spec, 3, 0, "job-master-0", 23456)
    # --nnodes alone under Slurm: the count is replaced, the rank still comes from SLURM_NODEID
    spec = detect(SLURM, flags(nnodes=2))
    assert same(spec, 2, 1, "gpu07", 23456) and spec.source.startswith("Slurm: --nnodes, SLURM_NODEID")


@pytest.mark.parametrize(
    "flag_values, words",
    [
        ({"nnodes": 2}, ["--nnodes 2 needs --node-rank", "SLURM_NODEID"]),
        ({"node_rank": 2}, ["node rank 2", "--node-rank", "node count 1"]),
        (
            {"nnodes": 2, "node_rank": 2, "master_addr": "a", "master_port": 1},
            ["node rank 2", "node count 2"],
        ),
        ({"nnodes": 2, "node_rank": 0, "master_port": 1}, ["--master-addr", "MASTER_ADDR"]),
        ({"nnodes": 2, "node_rank": 0, "master_addr": "a"}, ["--master-port", "MASTER_PORT"]),
        ({"nnodes": "two", "node_rank": 0}, ["--nnodes='two' is not an integer"]),
        ({"nnodes": 0, "node_rank": 0}, ["--nnodes=0", "at least 1"]),
        ({"nnodes": -2, "node_rank": 0}, ["--nnodes=-2 is negative"]),
        ({"nnodes": 2, "node_rank": -1}, ["--node-rank=-1 is negative"]),
        ({"nnodes": 2, "node_rank": "1.0"}, ["--node-rank='1.0' is not an integer"]),
        (
            {"nnodes": 2, "node_rank": 0, "master_addr": "a", "master_port": 70000},
            ["--master-port=70000", "65535"],
        ),
        ({"nnodes": 2, "node_rank": 0, "master_addr": "a", "master_port": 0}, ["--master-port=0"]),
        ({"nnodes": 2, "node_rank": 0, "master_addr": "a b", "master_port": 1}, ["--master-addr='a b'"]),
        ({"nnodes": 2, "node_rank": 0, "master_addr": "", "master_port": 1}, ["--master-addr=''"]),
    ],
)
def test_bad_flags(flag_values: dict, words: list[str]) -> None:
    fails({}, words, **flag_values)


# --- torchrun and Kubeflow ----------------------------------------------------------------------


def test_torchrun() -> None:
    spec = detect(TORCHRUN, flags())
    assert same(spec, 3, 2, "job-master-0", 23456)
    assert spec.source == "torchrun: PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT"
    env = {"PET_NNODES": "2", "PET_NODE_RANK": "0", "MASTER_ADDR": "m", "MASTER_PORT": "99"}
    assert same(detect(env, flags()), 2, 0, "m", 99)
    assert same(
        detect({**TORCHRUN, "PET_NNODES": "1", "PET_NODE_RANK": "0"}, flags()), 1, 0, "127.0.0.1", None
    )


def test_torchrun_errors() -> None:
    fails({**TORCHRUN, "PET_NNODES": "1:4"}, ["PET_NNODES='1:4'", "elastic"])
    fails(
        {**TORCHRUN, "PET_NODE_RANK": "3"},
        ["node rank 3 (from PET_NODE_RANK)", "node count 3 (from PET_NNODES)"],
    )
    fails({**TORCHRUN, "PET_NODE_RANK": "x"}, ["PET_NODE_RANK='x' is not an integer"])
    fails({k: v for k, v in TORCHRUN.items() if k != "PET_NODE_RANK"}, ["--node-rank", "PET_NODE_RANK"])
    fails(
        {k: v for k, v in TORCHRUN.items() if k != "PET_MASTER_PORT"},
        ["--master-port", "PET_MASTER_PORT", "MASTER_PORT"],
    )
    assert same(detect({**TORCHRUN, "PET_NNODES": "1:4"}, flags(nnodes=3)), 3, 2, "job-master-0", 23456)


def test_kubeflow_pytorchjob_one_launch_per_pod() -> None:
    spec = detect(PYTORCHJOB, flags())
    assert same(spec, 3, 1, "job-master-0", 23456)
    assert spec.source == "Kubeflow PyTorchJob: WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT"
    assert same(detect({**PYTORCHJOB, "LOCAL_WORLD_SIZE": "1"}, flags()), 3, 1, "job-master-0", 23456)


def test_kubeflow_errors() -> None:
    fails({**PYTORCHJOB, "LOCAL_WORLD_SIZE": "4"}, ["LOCAL_WORLD_SIZE='4'", "one launch per node"])
    fails({**PYTORCHJOB, "RANK": "3"}, ["node rank 3 (from RANK)", "node count 3 (from WORLD_SIZE)"])
    fails({**PYTORCHJOB, "WORLD_SIZE": "0"}, ["WORLD_SIZE='0'"])
    fails({**PYTORCHJOB, "MASTER_PORT": "http"}, ["MASTER_PORT='http' is not an integer"])
    # three of the four are not a PyTorchJob: a single node
    assert same(
        detect({k: v for k, v in PYTORCHJOB.items() if k != "RANK"}, flags()), 1, 0, "127.0.0.1", None
    )


# --- Slurm --------------------------------------------------------------------------------------


def test_slurm() -> None:
    spec = detect(SLURM, flags())
    assert same(spec, 4, 1, "gpu07", 20000 + 123456 % 10000)
    assert (
        spec.source
        == "Slurm: SLURM_NNODES, SLURM_NODEID, first host of SLURM_JOB_NODELIST, 20000 + SLURM_JOB_ID % 10000"
    )
    env = {k: v for k, v in SLURM.items() if k != "SLURM_NNODES"}
    assert detect(env, flags()).origin["nnodes"] == "SLURM_JOB_NUM_NODES"
    env = {**SLURM, "SLURM_JOB_NODELIST": "rack[2-3]-node[01-02]", "SLURM_NODEID": "3"}
    assert same(detect(env, flags()), 4, 3, "rack2-node01", 23456)


def test_slurm_jobs_sharing_a_node_get_different_ports() -> None:
    ports = {detect({**SLURM, "SLURM_JOB_ID": str(job)}, flags()).master_port for job in range(5000, 5010)}
    assert len(ports) == 10 and all(20000 <= p < 30000 for p in ports)


def test_slurm_master_variables_and_flags_win_over_the_derived_ones() -> None:
    spec = detect({**SLURM, "MASTER_ADDR": "gpu08", "MASTER_PORT": "4444"}, flags())
    assert (
        same(spec, 4, 1, "gpu08", 4444)
        and spec.source == "Slurm: SLURM_NNODES, SLURM_NODEID, MASTER_ADDR, MASTER_PORT"
    )
    spec = detect({**SLURM, "MASTER_PORT": "4444"}, flags(master_port=5555))
    assert spec.master_port == 5555


def test_slurm_step_variables_come_before_the_jobs() -> None:
    # `srun -N2 --ntasks-per-node=1` inside a 4-node job submitted with --ntasks-per-node=4
    env = {
        **SLURM,
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_TASKS_PER_NODE": "4(x4)",
        "SLURM_NTASKS": "16",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_STEP_NODELIST": "gpu[08,10]",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
        "SLURM_NODEID": "1",
    }
    spec = detect(env, flags())
    assert same(spec, 2, 1, "gpu08", 23456)
    assert spec.source.startswith(
        "Slurm: SLURM_STEP_NUM_NODES, SLURM_NODEID, first host of SLURM_STEP_NODELIST"
    )
    fails(
        {**env, "SLURM_STEP_TASKS_PER_NODE": "2,1"},
        ["SLURM_STEP_TASKS_PER_NODE='2,1'", "--ntasks-per-node=1"],
    )
    fails({**env, "SLURM_STEP_NUM_TASKS": "3"}, ["SLURM_STEP_NUM_TASKS='3'", "SLURM_STEP_NUM_NODES='2'"])


def test_a_one_node_slurm_allocation_is_a_single_node_whatever_its_tasks() -> None:
    env = {
        **SLURM,
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": "8",
        "SLURM_TASKS_PER_NODE": "8",
    }
    spec = detect(env, flags())
    assert same(spec, 1, 0, "127.0.0.1", None) and spec.source == "Slurm: SLURM_NNODES"


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"SLURM_NTASKS_PER_NODE": "2"}, ["SLURM_NTASKS_PER_NODE='2'", "srun --ntasks-per-node=1"]),
        ({"SLURM_TASKS_PER_NODE": "2(x3),1"}, ["SLURM_TASKS_PER_NODE='2(x3),1'", "more than one task"]),
        ({"SLURM_TASKS_PER_NODE": "1(x3),2"}, ["SLURM_TASKS_PER_NODE='1(x3),2'"]),
        ({"SLURM_TASKS_PER_NODE": "1(y4)"}, ["SLURM_TASKS_PER_NODE='1(y4)'", "not a list of task counts"]),
        ({"SLURM_NTASKS": "8"}, ["SLURM_NTASKS='8' tasks on SLURM_NNODES='4' nodes", "--ntasks-per-node=1"]),
        ({"SLURM_LOCALID": "1"}, ["SLURM_LOCALID='1'", "srun --ntasks-per-node=1"]),
        ({"SLURM_NODEID": "4"}, ["node rank 4 (from SLURM_NODEID)", "node count 4 (from SLURM_NNODES)"]),
        ({"SLURM_NODEID": "-1"}, ["SLURM_NODEID='-1' is negative"]),
        ({"SLURM_NNODES": "four"}, ["SLURM_NNODES='four' is not an integer"]),
        ({"SLURM_JOB_NODELIST": "gpu[07-"}, ["SLURM_JOB_NODELIST", "'gpu[07-'"]),
        ({"SLURM_JOB_NODELIST": "gpu[9-7]"}, ["SLURM_JOB_NODELIST", "reversed range '9-7'"]),
        ({"SLURM_JOB_NODELIST": None}, ["no master address", "--master-addr", "SLURM_JOB_NODELIST"]),
        ({"SLURM_JOB_ID": None}, ["no master port", "MASTER_PORT", "--master-port", "SLURM_JOB_ID"]),
        ({"SLURM_JOB_ID": "12x"}, ["SLURM_JOB_ID='12x' is not an integer"]),
        ({"MASTER_PORT": "99999"}, ["MASTER_PORT='99999' is not a port"]),
    ],
)
def test_slurm_errors(changes: dict, words: list[str]) -> None:
    env = {**SLURM, **changes}
    fails({k: v for k, v in env.items() if v is not None}, words)


# --- Open MPI and Kubernetes Indexed Jobs --------------------------------------------------------


def test_open_mpi_needs_the_master_address() -> None:
    fails(MPI, ["Open MPI", "--master-addr", "MASTER_ADDR", "MPI does not say where rank 0 runs"])
    fails({**MPI, "MASTER_ADDR": "n0"}, ["--master-port", "MASTER_PORT"])
    spec = detect({**MPI, "MASTER_ADDR": "n0", "MASTER_PORT": "29500"}, flags())
    assert same(spec, 3, 2, "n0", 29500)
    assert spec.source == "Open MPI: OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_RANK, MASTER_ADDR, MASTER_PORT"
    assert same(detect(MPI, flags(master_addr="n0", master_port=1)), 3, 2, "n0", 1)


def test_open_mpi_errors() -> None:
    env = {**MPI, "MASTER_ADDR": "n0", "MASTER_PORT": "29500"}
    fails({**env, "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, ["OMPI_COMM_WORLD_LOCAL_SIZE='2'", "ppr:1:node"])
    fails(
        {**env, "OMPI_COMM_WORLD_RANK": "3"},
        ["node rank 3 (from OMPI_COMM_WORLD_RANK)", "(from OMPI_COMM_WORLD_SIZE)"],
    )
    fails({**env, "OMPI_COMM_WORLD_SIZE": ""}, ["OMPI_COMM_WORLD_SIZE='' is not an integer"])


def test_kubernetes_indexed_job_needs_nnodes_and_the_master_address() -> None:
    fails(INDEXED, ["Indexed Job", "--nnodes"])
    fails(INDEXED, ["--master-addr", "MASTER_ADDR"], nnodes=4)
    fails(INDEXED, ["--master-port", "MASTER_PORT"], nnodes=4, master_addr="job-0.svc")
    spec = detect(INDEXED, flags(nnodes=4, master_addr="job-0.svc", master_port=29500))
    assert same(spec, 4, 2, "job-0.svc", 29500)
    assert (
        spec.source == "Kubernetes Indexed Job: --nnodes, JOB_COMPLETION_INDEX, --master-addr, --master-port"
    )
    fails(
        {"JOB_COMPLETION_INDEX": "4"},
        ["node rank 4 (from JOB_COMPLETION_INDEX)", "node count 4 (from --nnodes)"],
        nnodes=4,
        master_addr="a",
        master_port=1,
    )


# --- which system wins --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "envs, system",
    [
        ((TORCHRUN, PYTORCHJOB, SLURM, MPI, INDEXED), "torchrun"),
        ((PYTORCHJOB, SLURM, MPI, INDEXED), "Kubeflow PyTorchJob"),
        ((SLURM, MPI, INDEXED), "Slurm"),
        ((MPI, INDEXED, {"MASTER_ADDR": "n0", "MASTER_PORT": "1"}), "Open MPI"),
    ],
)
def test_the_first_system_that_applies_wins(envs: tuple, system: str) -> None:
    env = {k: v for e in envs for k, v in e.items()}
    assert detect(env, flags()).source.startswith(system + ":")


# --- resolving, sharing workers, the flags ------------------------------------------------------


def test_resolve() -> None:
    assert ipaddress.ip_address(resolve(detect({}, flags()))).is_loopback
    assert ipaddress.ip_address(resolve(detect({}, flags(nnodes=1, master_addr="localhost")))).is_loopback
    spec = detect({**MPI, "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "1"}, flags())
    assert resolve(spec) == "10.1.2.3"  # a literal address needs no lookup


def test_a_name_that_does_not_resolve_names_the_host_and_its_variable() -> None:
    # .invalid is reserved (RFC 6761): no such name exists anywhere, and nothing is contacted
    env = {**SLURM, "SLURM_JOB_NODELIST": "nosuchnode[1-4].invalid"}
    with pytest.raises(ClusterError) as e:
        resolve(detect(env, flags()))
    assert "'nosuchnode1.invalid'" in str(e.value) and "first host of SLURM_JOB_NODELIST" in str(e.value)


def test_node_ranks_share_the_workers_evenly_and_exactly() -> None:
    for nnodes, workers in ((1, 3), (2, 4), (4, 8), (3, 3)):
        ranges = [node_ranks(NodeSpec(nnodes, r, "h", 1, "test"), workers) for r in range(nnodes)]
        assert [w for rng in ranges for w in rng] == list(range(workers))
        assert len({len(rng) for rng in ranges}) == 1
    assert node_ranks(NodeSpec(4, 1, "h", 1, "test"), 8) == range(2, 4)


@pytest.mark.parametrize("nnodes, workers", [(3, 8), (4, 2), (2, 0)])
def test_node_ranks_refuse_an_uneven_share(nnodes: int, workers: int) -> None:
    spec = detect({}, flags(nnodes=nnodes, node_rank=0, master_addr="h", master_port=1))
    with pytest.raises(ClusterError) as e:
        node_ranks(spec, workers)
    assert f"--workers {workers}" in str(e.value) and f"{nnodes} nodes (from --nnodes)" in str(e.value)


def test_add_arguments_takes_torchruns_spellings() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser.add_argument_group("nodes"))
    args = parser.parse_args(
        ["--nnodes", "2", "--node_rank", "1", "--master-addr", "n0", "--master_port", "9"]
    )
    assert same(detect({}, args), 2, 1, "n0", 9)
    assert same(detect({}, parser.parse_args([])), 1, 0, "127.0.0.1", None)
