"""One `launch` per node: three "hosts" as network namespaces on one bridge, each with its own
address, started with torchrun's flags, with Slurm's variables and with Kubeflow's, by mpirun and
by srun on a throwaway Slurm cluster (slurm_cluster.py); the weights equal a one-machine run's, bit
for bit. Needs root (it creates and removes the namespaces); skipped elsewhere. The addresses are a
private range used only inside these namespaces."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, missing
from test_launch import LAUNCH, load_npz, run, same_bits

from numpy_cnn.distributed.token import new_token

SUBNET = "10.213.7"  # inside the test's namespaces only; nothing outside is ever contacted
NODES = 3
COMMON = ["--workers", "3", "--shards", "6", "conv-net", "--max-steps", "12", "--seed", "4"]


class Hosts:
    """NODES network namespaces joined by a bridge: host i has SUBNET.(i+1) and the name node0(i+1)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.bridge = f"ncbr{tag}"
        self.names = [f"ncnn{tag}{i}" for i in range(NODES)]
        self.made: list[list[str]] = []  # undo commands, newest last
        self._ip("link", "add", self.bridge, "type", "bridge")
        self.made.append(["ip", "link", "del", self.bridge])
        self._ip("link", "set", self.bridge, "up")
        hosts = "127.0.0.1 localhost\n" + "".join(f"{SUBNET}.{i + 1} node0{i + 1}\n" for i in range(NODES))
        for i, ns in enumerate(self.names):
            self._ip("netns", "add", ns)
            self.made.append(["ip", "netns", "del", ns])
            folder = Path("/etc/netns") / ns  # ip netns exec mounts this hosts file over /etc/hosts
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text(hosts)
            self.made.append(["rm", "-rf", str(folder)])
            outside, inside = f"ncv{tag}{i}", f"nci{tag}{i}"
            self._ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            self._ip("link", "set", outside, "master", self.bridge, "up")
            self._ip("link", "set", inside, "netns", ns)
            self._ip("-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", inside)
            self._ip("-n", ns, "link", "set", inside, "up")
            self._ip("-n", ns, "link", "set", "lo", "up")

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def start(self, node: int, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.names[node], *LAUNCH, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )

    def close(self) -> None:
        for undo in reversed(self.made):
            subprocess.run(undo, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    try:
        made = Hosts()
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot make network namespaces here: {e.stderr.decode().strip()}")
    yield made
    made.close()


def one_machine(folder: Path, args: list[str], mnist_dir: Path) -> dict:
    """The weights of `launch ARGS` on this machine alone, undisturbed."""
    result = run([*LAUNCH, *args, "--data-dir", str(mnist_dir), "--save", str(folder / "reference.npz")])
    assert result.returncode == 0, result.stdout + result.stderr
    return load_npz(folder / "reference.npz")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_dir) -> dict:
    return one_machine(tmp_path_factory.mktemp("one-machine"), COMMON, mnist_dir)


def run_nodes(hosts: Hosts, per_node: list[tuple[list[str], dict[str, str]]], timeout: float = 180):
    """Start one launch per node; wait for all; return (exit codes, outputs). Nothing outlives it."""
    jobs = [hosts.start(i, args, env) for i, (args, env) in enumerate(per_node)]
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for job in jobs:
            out, _ = job.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out)
    finally:
        for job in jobs:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait(timeout=10)
    return [job.returncode for job in jobs], outputs


def base_env(mnist_dir: Path, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PET_", "OMPI_"))}
    return {**env, "NUMPY_CNN_DATA": str(mnist_dir), "NUMPY_CNN_TOKEN": token}


def check_run(codes, outputs, save: Path, reference: dict) -> None:
    assert codes == [0] * NODES, "\n\n".join(outputs)
    assert same_bits(load_npz(save), reference)


def test_three_nodes_with_torchrun_flags(hosts, reference, mnist_dir, tmp_path):
    env, save = base_env(mnist_dir, new_token()), tmp_path / "nodes.npz"
    per_node = []
    for rank in range(NODES):
        flags = ["--nnodes", "3", "--node-rank", str(rank), "--master-addr", f"{SUBNET}.1"]
        flags += ["--master-port", "29611", *COMMON] + (["--save", str(save)] if rank == 0 else [])
        per_node.append((flags, env))
    codes, outputs = run_nodes(hosts, per_node)
    check_run(codes, outputs, save, reference)
    assert "node 1 of 3" in outputs[1] and f"server at {SUBNET}.1:29611" in outputs[1]


def test_three_nodes_under_slurm_variables(hosts, reference, mnist_dir, tmp_path):
    env, save = base_env(mnist_dir, new_token()), tmp_path / "slurm.npz"
    per_node = []
    for rank in range(NODES):
        slurm = {
            "SLURM_JOB_ID": "4242",
            "SLURM_NNODES": "3",
            "SLURM_NODEID": str(rank),
            "SLURM_JOB_NODELIST": "node[01-03]",  # names resolved by each namespace's hosts file
            "SLURM_NTASKS": "3",
            "SLURM_TASKS_PER_NODE": "1(x3)",
            "SLURM_LOCALID": "0",
        }
        per_node.append(([*COMMON] + (["--save", str(save)] if rank == 0 else []), {**env, **slurm}))
    codes, outputs = run_nodes(hosts, per_node)
    check_run(codes, outputs, save, reference)
    assert "SLURM_JOB_NODELIST" in outputs[2]


def test_three_pods_with_kubeflow_variables(hosts, reference, mnist_dir, tmp_path):
    env, save = base_env(mnist_dir, new_token()), tmp_path / "kubeflow.npz"
    per_node = []
    for rank in range(NODES):
        pod = {"MASTER_ADDR": "node01", "MASTER_PORT": "29613", "WORLD_SIZE": "3", "RANK": str(rank)}
        per_node.append(([*COMMON] + (["--save", str(save)] if rank == 0 else []), {**env, **pod}))
    codes, outputs = run_nodes(hosts, per_node)
    check_run(codes, outputs, save, reference)


def test_a_node_with_another_token_gets_nothing_through(hosts, mnist_dir, tmp_path):
    token = new_token()
    per_node = []
    for rank in range(2):
        flags = ["--nnodes", "2", "--node-rank", str(rank), "--master-addr", f"{SUBNET}.1"]
        flags += ["--master-port", "29615", "--join-timeout", "8", "--timeout", "2"]
        flags += ["--workers", "2", "conv-net", "--max-steps", "5"]
        per_node.append((flags, base_env(mnist_dir, token if rank == 0 else new_token())))
    jobs = [hosts.start(i, args, env) for i, (args, env) in enumerate(per_node)]
    try:
        outputs = [job.communicate(timeout=120)[0] for job in jobs]
    finally:
        for job in jobs:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
    assert jobs[0].returncode == 1 and "were ready within 8 s" in outputs[0], outputs[0]
    assert jobs[1].returncode == 1, outputs[1]
    assert "worker 1 connected" not in outputs[0]  # the stranger never got past CURVE


def test_a_job_across_machines_needs_a_token(mnist_dir):
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_CNN_TOKEN"}
    args = ["--nnodes", "2", "--node-rank", "0", "--master-addr", "127.0.0.1", "--master-port", "29617"]
    command = [*LAUNCH, *args, "--workers", "2", "conv-net", "--data-dir", str(mnist_dir)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and "launch token" in result.stderr and "started" not in result.stdout


LONGER = [
    "--workers",
    "3",
    "--shards",
    "6",
    "conv-net",
    "--max-steps",
    "150",
    "--seed",
    "4",
    "--timeout",
    "2",
]


@pytest.fixture(scope="module")
def longer_reference(tmp_path_factory, mnist_dir) -> dict:
    return one_machine(tmp_path_factory.mktemp("one-machine-longer"), LONGER, mnist_dir)


def test_a_node_killed_mid_run_leaves_the_weights_bitwise_unchanged(
    hosts, mnist_dir, tmp_path, longer_reference
):
    common = LONGER
    env, save, ckdir = base_env(mnist_dir, new_token()), tmp_path / "nodes.npz", tmp_path / "ck"
    jobs = []
    for rank in range(NODES):
        flags = [
            "--nnodes",
            "3",
            "--node-rank",
            str(rank),
            "--master-addr",
            f"{SUBNET}.1",
            "--master-port",
            "29619",
        ]
        extra = (
            ["--save", str(save), "--checkpoint-dir", str(ckdir), "--checkpoint-every", "10"]
            if rank == 0
            else []
        )
        jobs.append(hosts.start(rank, [*flags, *common, *extra], env))
    try:
        deadline = time.monotonic() + 120
        while not (ckdir / "step-000000030.npz").exists():
            assert time.monotonic() < deadline and jobs[0].poll() is None, "node 0 made no progress"
            time.sleep(0.05)
        pids = subprocess.run(
            ["ip", "netns", "pids", hosts.names[2]], capture_output=True, text=True
        ).stdout.split()
        for pid in map(int, pids):  # node 2's launch and its workers: the whole "machine" dies
            os.kill(pid, signal.SIGKILL)
        outputs = [job.communicate(timeout=180)[0] for job in jobs[:2]]
    finally:
        for job in jobs:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=10)
    assert [job.returncode for job in jobs[:2]] == [0, 0], "\n\n".join(outputs)
    assert re.search(r"server: worker 2 .*; dropped it at step \d+", outputs[0]), outputs[0]
    assert same_bits(load_npz(save), longer_reference)


def server_pids(hosts: Hosts, node: int) -> list[int]:
    """The `launch server` processes in `node`'s namespace (not its launch, nor its workers)."""
    out = subprocess.run(["ip", "netns", "pids", hosts.names[node]], capture_output=True, text=True)
    found = []
    for pid in map(int, out.stdout.split()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"launch server" in b" ".join(argv):
            found.append(pid)
    return found


def test_a_server_killed_mid_run_comes_back_and_every_node_rejoins(
    hosts, mnist_dir, tmp_path, longer_reference
):
    env, save, ckdir = base_env(mnist_dir, new_token()), tmp_path / "nodes.npz", tmp_path / "ck"
    jobs = []
    for rank in range(NODES):
        flags = ["--nnodes", "3", "--node-rank", str(rank), "--master-addr", f"{SUBNET}.1"]
        flags += ["--master-port", "29623", *LONGER]
        if rank == 0:
            flags += ["--save", str(save), "--checkpoint-dir", str(ckdir), "--checkpoint-every", "10"]
        jobs.append(hosts.start(rank, flags, env))
    try:
        deadline = time.monotonic() + 120
        while not (ckdir / "step-000000030.npz").exists():
            assert time.monotonic() < deadline and jobs[0].poll() is None, "node 0 made no progress"
            time.sleep(0.05)
        (server,) = server_pids(hosts, 0)
        os.kill(server, signal.SIGKILL)  # only the server: node 0's launch and workers live on
        outputs = [job.communicate(timeout=120)[0] for job in jobs]
    finally:
        for job in jobs:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=10)
    assert [job.returncode for job in jobs] == [0] * NODES, "\n\n".join(outputs)
    restarted = rf"launch: server \(pid {server}\) was killed by SIGKILL; restarting it from checkpoint"
    assert re.search(restarted, outputs[0]), outputs[0]
    for node, output in enumerate(outputs):  # every worker, on every node, is the one it started with
        assert f"welcomed back by the server at tcp://{SUBNET}.1:29623" in output or node == 0, output
        assert "restarting it (" not in output, output
    assert "welcomed back by the server at ipc://" in outputs[0], outputs[0]
    assert same_bits(load_npz(save), longer_reference)


def test_launch_token_prints_or_writes_a_private_token(tmp_path):
    printed = subprocess.run([*LAUNCH, "token"], capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0 and len(printed.stdout.strip()) >= 43
    path = tmp_path / "job.token"
    written = subprocess.run(
        [*LAUNCH, "token", "--file", str(path)], capture_output=True, text=True, timeout=60
    )
    assert written.returncode == 0 and stat.S_IMODE(path.stat().st_mode) == 0o600
    again = subprocess.run(
        [*LAUNCH, "token", "--file", str(path)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 2 and str(path) in again.stderr  # never overwrites
    path.chmod(0o644)
    args = ["--token-file", str(path), "--nnodes", "2", "--node-rank", "0", "--master-addr", "127.0.0.1"]
    refused = subprocess.run(
        [*LAUNCH, *args, "--master-port", "29621", "conv-net"], capture_output=True, text=True
    )
    assert refused.returncode == 2 and str(path) in refused.stderr


AGENT = """#!/bin/sh
# Open MPI's rsh agent, called as "agent HOST COMMAND...": HOST is one of the test's namespaces
host=$1; shift
# every "host" shares this machine's /tmp: give each daemon a session folder of its own
mkdir -p "$AGENT_TMP/$host"
exec ip netns exec "$host" env OMPI_MCA_orte_tmpdir_base="$AGENT_TMP/$host" sh -c "$*"
"""


def wait_reachable(hosts: Hosts, address: str, timeout: float = 15.0) -> None:
    """Until every namespace can open a TCP connection to `address` (a fresh address may take a
    moment to answer), bounded by `timeout`."""
    listener = socket.create_server((address, 0))
    probe = f"import socket; socket.create_connection(({address!r}, {listener.getsockname()[1]}), 1).close()"
    try:
        deadline = time.monotonic() + timeout
        for ns in hosts.names:
            while subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", probe], capture_output=True
            ).returncode:
                assert time.monotonic() < deadline, f"{ns} cannot reach {address}"
                time.sleep(0.2)
    finally:
        listener.close()


def test_mpirun_starts_one_launch_per_node(hosts, reference, mnist_dir, tmp_path):
    """Debian's Open MPI starts the three launches, one per namespace, through an rsh agent that
    enters the namespace instead of ssh; the job needs no MPI of its own, only mpirun's variables."""
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed (Debian's openmpi-bin)")
    agent = tmp_path / "agent.sh"
    agent.write_text(AGENT)
    agent.chmod(0o755)
    # mpirun's daemons call home over the bridge: give this side an address on it, removed after
    subprocess.run(["ip", "addr", "add", f"{SUBNET}.254/24", "dev", hosts.bridge], check=True)
    wait_reachable(hosts, f"{SUBNET}.254")
    save = tmp_path / "mpi.npz"
    env = {
        **base_env(mnist_dir, new_token()),
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "AGENT_TMP": str(tmp_path / "ompi"),  # read by the agent script above
    }
    mpirun = ["mpirun", "--host", ",".join(hosts.names), "--map-by", "ppr:1:node", "-np", str(NODES)]
    mpirun += ["--mca", "plm_rsh_agent", str(agent), "--mca", "oob_tcp_if_include", f"{SUBNET}.0/24"]
    mpirun += ["-x", "NUMPY_CNN_TOKEN", "-x", "NUMPY_CNN_DATA", "-x", "PATH"]
    command = [*mpirun, *LAUNCH, "--master-addr", f"{SUBNET}.1", "--master-port", "29623", *COMMON]
    try:
        result = subprocess.run(
            [*command, "--save", str(save)], capture_output=True, text=True, env=env, timeout=240
        )
    finally:
        subprocess.run(["ip", "addr", "del", f"{SUBNET}.254/24", "dev", hosts.bridge], capture_output=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OMPI_COMM_WORLD_SIZE" in result.stdout
    assert same_bits(load_npz(save), reference)


def test_a_worker_node_needs_only_the_workers_key_files_and_none_of_the_servers_paths(mnist_dir, tmp_path):
    full = tmp_path / "keys"
    subprocess.run([*LAUNCH, "keygen", str(full)], check=True, capture_output=True, timeout=60)
    workers_side = tmp_path / "worker-keys"  # what a worker's machine is given: no server secret
    workers_side.mkdir(mode=0o700)
    for name in ("worker.key_secret", "server.key"):
        shutil.copy(full / name, workers_side / name)
    args = ["--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1", "--master-port", "29625"]
    args += ["--keys", str(workers_side), "--timeout", "1", "--join-timeout", "2", "--max-restarts", "0"]
    # the server's outputs live on node 0: node 1 does not check them
    args += [
        "--workers",
        "2",
        "fc-net",
        "--data-dir",
        str(mnist_dir),
        "--resume",
        str(tmp_path / "node0-only"),
    ]
    result = subprocess.run([*LAUNCH, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr  # no server came: not a flag error
    assert "did not welcome this worker in 2 s" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_the_ipc_folder_must_be_this_users(tmp_path, server_transport):
    folder = tmp_path / "ipc"
    folder.mkdir(mode=0o700)
    os.chown(folder, 4242, 4242)  # a folder of somebody else's, mode 0700 or not
    with pytest.raises(OSError, match="of this user's"):
        server_transport(ipc_dir=str(folder))


@pytest.fixture
def slurm(hosts):
    """Slurm on the three namespaces (slurmctld on node01, one slurmd each), gone after the test."""
    if missing():
        pytest.skip(f"{', '.join(missing())} not installed (Debian: apt-get install slurm-wlm munge)")
    names = [f"node0{i + 1}" for i in range(NODES)]
    try:
        cluster = SlurmCluster(hosts.names, names, [f"{SUBNET}.{i + 1}" for i in range(NODES)])
    except RuntimeError as e:  # a daemon refused to run on this machine (its logs say why)
        pytest.skip(f"cannot run Slurm's daemons here: {e}")
    yield cluster
    cluster.close()


@pytest.mark.slurm
def test_srun_starts_one_launch_per_node(slurm, hosts, mnist_dir, tmp_path):
    """`srun -N 3 --ntasks-per-node=1 launch ...` on a real (throwaway) Slurm cluster: every node
    gets the same command line and finds its part from Slurm's variables; the weights node 0's
    server saves equal a one-machine run's, bit for bit."""
    common = ["--workers", "3", "--shards", "6", "conv-net", "--max-steps", "100", "--seed", "5"]
    reference, save = tmp_path / "reference.npz", tmp_path / "srun.npz"
    result = run([*LAUNCH, *common, "--data-dir", str(mnist_dir), "--save", str(reference)])
    assert result.returncode == 0, result.stdout + result.stderr
    srun = ["srun", "-N", str(NODES), "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--time=5"]
    env = {**base_env(mnist_dir, new_token()), "SLURM_CONF": slurm.env["SLURM_CONF"]}
    command = slurm.run_in(hosts.names[0], [*srun, *LAUNCH, *common, "--save", str(save)])
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=240, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"srun did not finish in 240 s\n{e.stdout}\n{e.stderr}\n{slurm.logs()}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + slurm.logs()
    assert "node 2 of 3 (from Slurm: SLURM_STEP_NUM_NODES" in result.stdout, result.stdout
    assert same_bits(load_npz(save), load_npz(reference))
