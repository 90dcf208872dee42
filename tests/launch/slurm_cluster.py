"""A throwaway Slurm cluster on the test's network namespaces: Debian's slurm-wlm and munge, one
munged for all (its socket is a file every namespace sees), slurmctld in the first namespace and one
slurmd per namespace, every file under one temporary folder. `SlurmCluster(names, addresses)` starts
it and waits until sinfo shows every node idle; `close()` stops every daemon it started and removes
the folder. Nothing here touches the machine's own /etc/slurm or /etc/munge."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "srun", "sinfo", "nsenter", "unshare")


def missing() -> list[str]:
    """The programs this needs that are not installed (Debian: apt-get install slurm-wlm munge)."""
    return [name for name in PROGRAMS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


CONF = """\
ClusterName=numpycnn
SlurmctldHost={controller}({controller_addr})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/linear
SchedulerType=sched/builtin
MpiDefault=none
SwitchType=switch/none
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation={root}/ctld
SlurmctldPidFile={root}/slurmctld.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdSpoolDir={root}/%n
SlurmdPidFile={root}/%n/slurmd.pid
SlurmdLogFile={root}/%n/slurmd.log
SlurmctldTimeout=60
SlurmdTimeout=60
MessageTimeout=10
InactiveLimit=0
KillWait=2
MinJobAge=5
TCPTimeout=5
{nodes}
PartitionName=test Nodes=ALL Default=YES State=UP MaxTime=INFINITE
"""


class SlurmCluster:
    """Slurm on `names` (network namespaces) whose hosts are `hosts[i]` at `addresses[i]`."""

    def __init__(self, names: list[str], hosts: list[str], addresses: list[str], timeout: float = 60) -> None:
        self.names, self.hosts = names, hosts
        self.root = Path(tempfile.mkdtemp(prefix="numpy-cnn-slurm-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.munged_pid: int | None = None
        try:
            self._start(addresses, timeout)
        except BaseException:
            self.close()
            raise

    def _start(self, addresses: list[str], timeout: float) -> None:
        root = self.root
        root.chmod(0o700)
        key, sock = root / "munge.key", root / "munge.socket"
        subprocess.run([program("mungekey"), "-c", "-k", str(key)], check=True, capture_output=True)
        key.chmod(0o600)
        subprocess.run(
            [
                program("munged"),
                "--force",
                f"--socket={sock}",
                f"--key-file={key}",
                f"--pid-file={root}/munged.pid",
                f"--log-file={root}/munged.log",
                f"--seed-file={root}/munged.seed",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )  # forks into the background and writes its pid file before returning
        self.munged_pid = int((root / "munged.pid").read_text())
        nodes = "\n".join(
            f"NodeName={host} NodeAddr={addr} CPUs=1 RealMemory=1000 State=UNKNOWN"
            for host, addr in zip(self.hosts, addresses)
        )
        (root / "ctld").mkdir()
        for host in self.hosts:
            (root / host).mkdir()
        self.conf = root / "slurm.conf"
        self.conf.write_text(
            CONF.format(
                controller=socket.gethostname(),  # slurmctld only runs where its hostname is listed
                controller_addr=addresses[0],
                ctld_port=6817,
                slurmd_port=6818,
                socket=sock,
                root=root,
                nodes=nodes,
            )
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
            "SLURM_CONF": str(self.conf),
        }
        self._daemon(self.names[0], [program("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        for ns, host in zip(self.names, self.hosts):
            self._daemon(ns, [program("slurmd"), "-D", "-N", host, "-f", str(self.conf)], f"slurmd-{host}")
        deadline = time.monotonic() + timeout
        while True:
            idle = self.sinfo()
            if idle == len(self.hosts):
                return
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{idle} of {len(self.hosts)} nodes idle after {timeout} s\n{self.logs()}")
            time.sleep(0.5)

    def _daemon(self, ns: str, command: list[str], name: str) -> None:
        with open(self.root / f"{name}.out", "wb") as out:  # the daemon keeps its own copy
            self.procs[name] = subprocess.Popen(
                self.run_in(ns, command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    @staticmethod
    def run_in(ns: str, command: list[str]) -> list[str]:
        """`command` inside namespace `ns` with its hosts file, like `ip netns exec` but keeping the
        machine's /sys, whose cgroup mounts slurmd reads (ip netns exec mounts a fresh sysfs)."""
        hosts = Path("/etc/netns") / ns / "hosts"
        script = f'mount --bind "{hosts}" /etc/hosts && exec "$@"'
        return ["nsenter", f"--net=/run/netns/{ns}", "unshare", "--mount", "sh", "-c", script, "sh", *command]

    def sinfo(self) -> int:
        """How many nodes the controller reports idle (0 while it cannot be reached)."""
        result = subprocess.run(
            self.run_in(self.names[0], ["sinfo", "-h", "-N", "-o", "%N %t"]),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
        )
        return sum(line.split()[1:] == ["idle"] for line in result.stdout.splitlines())

    def logs(self) -> str:
        parts = []
        for path in sorted(self.root.rglob("*.log")) + sorted(self.root.glob("*.out")):
            text = path.read_text(errors="replace")[-2000:]
            parts.append(f"--- {path.relative_to(self.root)}\n{text}")
        return "\n".join(parts)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._stop_steps()
        if self.munged_pid is not None:
            try:
                os.kill(self.munged_pid, signal.SIGTERM)
                for _ in range(100):
                    os.kill(self.munged_pid, 0)
                    time.sleep(0.05)
                os.kill(self.munged_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def _stop_steps(self) -> None:
        """slurmstepd processes left in the namespaces (a job cut short) die with the cluster."""
        for ns in self.names:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in map(int, pids):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
