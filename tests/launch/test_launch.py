"""The `launch` command end to end: real processes, real sockets, bounded waits, no leftovers."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from numpy_cnn.distributed.config import local_spin

LAUNCH = [sys.executable, "-m", "numpy_cnn.launch"]


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


def run(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def alive(pid: int) -> bool:
    """Is `pid` a running process (not gone, not a zombie waiting to be reaped)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def sigint_at_default() -> None:
    """In the launcher's process, before exec: SIGINT at its default, as a terminal's job has it.

    A shell without job control starts `python -m pytest ... &` with SIGINT ignored; an ignored
    signal stays ignored across exec, and Python then installs no KeyboardInterrupt handler. The
    launcher started from such a pytest would (rightly, like any program) ignore the test's Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Running:
    """A launch process whose merged output is read line by line in the background."""

    def __init__(self, args: list[str], env: dict | None = None) -> None:
        self.process = subprocess.Popen(
            [*LAUNCH, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            preexec_fn=sigint_at_default,  # Ctrl-C must reach it however pytest was started
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.searched = 0  # lines of `seen` that wait_for has looked at
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        """The first line after the previous match that matches `pattern`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while self.searched < len(self.seen):
                self.searched += 1
                match = re.search(pattern, self.seen[self.searched - 1])
                if match:
                    return match
            try:
                self.seen.append(self.lines.get(timeout=0.1))
            except queue.Empty:
                continue
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n" + "\n".join(self.seen))

    def pids(self) -> dict[str, int]:
        """Each child's newest pid, by name ("server", "worker 1")."""
        return dict(self.started())

    def started(self) -> list[tuple[str, int]]:
        """Every child started so far, restarted workers included."""
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        found = (re.search(r"launch: started (.+) \(pid (\d+)\)", line) for line in self.seen)
        return [(m[1], int(m[2])) for m in found if m]

    def finish(self, timeout: float) -> int:
        rc = self.process.wait(timeout=timeout)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return rc

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def running():
    """start(args) -> a Running launch; it and everything it started are gone after the test."""
    jobs: list[Running] = []

    def start(args: list[str], **kw) -> Running:
        jobs.append(Running(args, **kw))
        return jobs[-1]

    yield start
    for job in jobs:
        job.kill()
        for pid in wait_gone([pid for _, pid in job.started()], timeout=10):
            os.kill(pid, signal.SIGKILL)


def long_job(mnist_dir) -> list[str]:
    return ["conv-net", "--workers", "2", "--data-dir", str(mnist_dir)]


@pytest.mark.parametrize("model,steps", [("conv-net", 12), ("fc-net", 30)])
def test_any_worker_count_and_single_process_give_the_same_bits(mnist_dir, tmp_path, model, steps):
    common = [model, "--max-steps", str(steps), "--seed", "3", "--data-dir", str(mnist_dir)]
    weights = {}
    for name, extra in [
        ("workers-1", ["--workers", "1"]),
        ("workers-2", ["--workers", "2", "--buckets", "stream", "--metrics", str(tmp_path / "m.jsonl")]),
        ("workers-2-one", ["--workers", "2", "--buckets", "one"]),  # all buckets in one message
        # CURVE TCP, not ipc: the arrays travel in the messages, not in shared memory
        (
            "workers-2-tcp",
            [
                "--workers",
                "2",
                "--local-transport",
                "tcp",
                "--buckets",
                "stream",
                "--metrics",
                str(tmp_path / "m-tcp.jsonl"),
            ],
        ),
        ("workers-4", ["--workers", "4"]),
        ("single-process", ["--workers", "4", "--single-process"]),
    ]:
        path = tmp_path / f"{name}.npz"
        result = run([*LAUNCH, *common, *extra, "--save", str(path)])
        assert result.returncode == 0, result.stdout + result.stderr
        weights[name] = load_npz(path)
    for name, w in weights.items():
        assert same_bits(w, weights["workers-1"]), name

    # serial training cut into the same 4 micro-shards adds the same numbers in the same tree
    same_shards = tmp_path / "serial-4.npz"
    serial = run(
        [sys.executable, "-m", "numpy_cnn.train", *common, "--shards", "4", "--save", str(same_shards)]
    )
    assert serial.returncode == 0, serial.stderr
    assert same_bits(load_npz(same_shards), weights["workers-1"])

    serial_path = tmp_path / "serial.npz"
    serial = run(
        [sys.executable, "-m", "numpy_cnn.train", *common, "--shards", "1", "--save", str(serial_path)]
    )
    assert serial.returncode == 0, serial.stderr
    serial_weights = load_npz(serial_path)
    for k, w in weights["workers-1"].items():
        # Same start and batches; only the order of the float32 sums differs. Nearly every weight
        # agrees to float32 rounding; where a gradient is itself at rounding level (e.g. border
        # pixels), Adam's g / sqrt(v) magnifies that noise, so a few may differ by more.
        diff = np.abs(w - serial_weights[k]) / np.abs(serial_weights[k]).max()
        assert np.mean(diff > 1e-5) <= 1e-4, k
        assert diff.max() <= 1e-4, k

    settings, record = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert settings["type"] == "config" and settings["workers"] == 2 and "threads" not in settings
    assert record["step"] == steps and 0 < record["test_acc"] <= 1
    for key in ("loss", "train_acc", "seconds", "samples_per_s", "compute_ms", "update_ms"):
        assert record[key] > 0, key
    assert record["comm_ms"] >= 0  # streaming, the update overlaps the computing: it may leave none
    # local workers share the server's clock: the part of a step no worker computes is known
    assert 0 < record["exposed_comm_ms"] < record["step_ms"]
    # over the Unix socket the arrays lie in shared memory: only the headers cross it
    assert 0 < record["bytes_per_step"] < 4000
    # over TCP each of 2 workers sends one gradient (a message a bucket) and gets the new weights
    # (an UPDATE a bucket, but the next PARAMS carries a step's last bucket, and the job's last
    # step's never goes out): 4 copies, plus small headers; and the first step sends each all the
    # weights once
    from numpy_cnn import buckets
    from numpy_cnn.models import build

    _, tcp = [json.loads(line) for line in (tmp_path / "m-tcp.jsonl").read_text().splitlines()]
    arrays = sum(a.nbytes for a in weights["workers-1"].values())
    net = build(model)
    last = sum(net.parameters[i].data.nbytes for i in buckets.plan(net)[-1])
    least = 4 * arrays + 2 * (arrays - last) / steps
    assert least < tcp["bytes_per_step"] < least + 4000


def test_a_different_seed_gives_different_weights(mnist_dir, tmp_path):
    paths = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for seed, path in zip(["1", "2"], paths):
        args = ["fc-net", "--max-steps", "3", "--seed", seed, "--workers", "1", "--save", str(path)]
        assert run([*LAUNCH, *args, "--single-process", "--data-dir", str(mnist_dir)]).returncode == 0
    assert not same_bits(load_npz(paths[0]), load_npz(paths[1]))


def wait_for_file(path: Path, job: Running, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline and job.process.poll() is None, f"no {path.name}"
        time.sleep(0.01)


def test_dead_and_stuck_workers_leave_the_weights_bitwise_unchanged(mnist_dir, tmp_path, running):
    common = ["conv-net", "--workers", "2", "--max-steps", "1500", "--batch-size", "32"]
    common += ["--data-dir", str(mnist_dir)]
    reference = tmp_path / "reference.npz"
    result = run([*LAUNCH, *common, "--single-process", "--save", str(reference)])
    assert result.returncode == 0, result.stderr

    out, ckdir = tmp_path / "out.npz", tmp_path / "ck"
    args = ["--timeout", "2", "--max-restarts", "1", "--save", str(out)]
    job = running([*common, *args, "--checkpoint-dir", str(ckdir), "--checkpoint-every", "50"])
    wait_for_file(ckdir / "step-000000100.npz", job)  # mid-run
    first = job.pids()
    job.searched = len(job.seen)  # what happened before the kill does not count below
    os.kill(first["worker 1"], signal.SIGKILL)  # a crash: its connection closes
    job.wait_for(r"worker 1 \(pid \d+\) was killed by SIGKILL; restarting it \(1 of --max-restarts 1\)")
    job.wait_for(r"\[server\] server: worker 1 is ready")  # the restarted one is back
    os.kill(first["worker 0"], signal.SIGSTOP)  # a hang: alive, connected, silent
    assert job.finish(timeout=120) == 0, "\n".join(job.seen)
    # the launcher's lines and the server's come through different pipes: their order may vary
    log = "\n".join(job.seen)
    for expected in (
        # the crashed one's work, during a step or from the next one on
        r"worker 0 takes over buckets \[[0-9, ]+\] of micro-shards \[\(2, 4\)\]"
        r"|by worker: \{0: \[\(0, 2\), \(2, 4\)\]\}",
        r"server: worker 0 sent nothing for 2 s \(no heartbeat\)",
        r"launch: worker 0 \(pid \d+\) stopped responding; killing it",
        r"no restarts left \(--max-restarts 1\), the others carry on",
        r"worker 1 takes over buckets|by worker: \{1: \[\(0, 2\), \(2, 4\)\]\}",
    ):
        assert re.search(expected, log), expected
    assert same_bits(load_npz(out), load_npz(reference))
    assert wait_gone([pid for _, pid in job.started()], timeout=5) == []


@pytest.mark.parametrize("failure", ["killed", "stuck"])
def test_on_worker_failure_abort_stops_the_job(mnist_dir, tmp_path, running, failure):
    ckdir = tmp_path / "ck"
    args = [*long_job(mnist_dir), "--on-worker-failure", "abort", "--timeout", "2"]
    job = running([*args, "--checkpoint-dir", str(ckdir), "--checkpoint-every", "20"])
    wait_for_file(ckdir / "step-000000020.npz", job)
    pids = job.pids()
    os.kill(pids["worker 1"], signal.SIGKILL if failure == "killed" else signal.SIGSTOP)
    assert job.finish(timeout=20) == 1
    if failure == "killed":  # the launcher sees the process die, or the server its socket close
        expected = (
            r"launch: error: worker 1 was killed by SIGKILL \(--on-worker-failure abort\)"
            r"|error: worker 1 is unreachable \(.*\) at step \d+ \(--on-worker-failure abort\)"
        )
    else:  # the server sees the silence
        expected = r"worker 1 sent nothing for 2 s \(no heartbeat\) at step"
    assert any(re.search(expected, line) for line in job.seen), "\n".join(job.seen)
    assert any(f"--resume {ckdir}" in line for line in job.seen)
    assert wait_gone(list(pids.values()), timeout=5) == []


@pytest.mark.parametrize("failure", ["killed", "stuck"])
def test_a_dead_or_stuck_server_stops_the_job(mnist_dir, running, failure):
    job = running([*long_job(mnist_dir), "--timeout", "2"])  # no --checkpoint-dir: no way back
    job.wait_for(r"\[server\] server: worker 1 is ready")
    time.sleep(2)  # its first steps are done: training has started, and the job says how to resume
    pids = job.pids()
    os.kill(pids["server"], signal.SIGKILL if failure == "killed" else signal.SIGSTOP)
    start = time.monotonic()
    assert job.finish(timeout=20) == 1
    if failure == "killed":  # the launcher sees it exit
        expected = "launch: error: server was killed by SIGKILL"
    else:  # its workers hear nothing for --timeout, and say so
        expected = "launch: error: server stopped responding (worker"
        assert any("has not said anything for 2 s: it is gone or stuck" in line for line in job.seen)
        assert time.monotonic() - start < 2 + 3 + 5  # timeout, SIGTERM grace, slack
    assert any(expected in line for line in job.seen), "\n".join(job.seen)
    hint = "launch: this run wrote no checkpoints; with --checkpoint-dir DIR a stopped run can be resumed"
    assert hint in job.seen, "\n".join(job.seen)
    assert [name for name, _ in job.started()].count("server") == 1  # it was not restarted
    assert wait_gone(list(pids.values()), timeout=5) == []


def test_ctrl_c_stops_every_process(mnist_dir, running):
    job = running(long_job(mnist_dir))
    job.wait_for(r"\[worker 1\] worker 1: conv-net")
    pids = job.pids()
    job.process.send_signal(signal.SIGINT)
    assert job.finish(timeout=15) == 130
    assert wait_gone(list(pids.values()), timeout=5) == []


def test_children_do_not_outlive_a_killed_launcher(mnist_dir, running):
    job = running(long_job(mnist_dir))
    job.wait_for(r"\[worker 1\] worker 1: conv-net")
    pids = job.pids()
    server = Path(f"/proc/{pids['server']}/cmdline").read_bytes().split(b"\0")
    folder = Path(os.fsdecode(server[server.index(b"--ipc-dir") + 1]))  # the job's private folder
    assert [p.name for p in folder.glob("params-*")]  # the parameters it shares with its workers
    keys = Path(os.fsdecode(server[server.index(b"--keys") + 1]))  # the key set made for this job
    assert b"--temporary-keys" in server and (keys / "server.key_secret").exists()
    # the launcher tells its workers how long to poll, from its machine's workers and cores
    environ = Path(f"/proc/{pids['worker 1']}/environ").read_bytes().split(b"\0")
    spin = local_spin(2).get("NUMPY_CNN_SPIN_US", os.environ.get("NUMPY_CNN_SPIN_US"))
    assert f"NUMPY_CNN_SPIN_US={spin}".encode() in environ
    job.process.kill()  # SIGKILL: the launcher cannot clean up; the lifelines must
    assert wait_gone(list(pids.values()), timeout=10) == []
    assert not folder.exists()  # the server removed its files, its socket, its lanes and the folder
    assert not keys.exists()  # and the job's secret keys


@pytest.mark.parametrize(
    "args,message",
    [
        (["conv-net", "--workers", "3"], "--shards 4 is not divisible by --workers 3"),
        (["conv-net", "--workers", "0"], "--workers: must be a positive integer"),
        (["conv-net", "--batch-size", "2"], "--batch-size 2 is smaller than --shards 4"),
        (["resnet"], "unknown model 'resnet'"),
        (["conv-net", "--lr", "-1"], "--lr: must be a positive number"),
        (["conv-net", "--save", "/nonexistent/dir/x.npz"], "does not exist or is not writable"),
        (["conv-net", "--frobnicate"], "unrecognized arguments"),
        (["conv-net", "--on-worker-failure", "retry"], "invalid choice: 'retry'"),
        (["conv-net", "--buckets", "some"], "invalid choice: 'some'"),
        (["conv-net", "--max-restarts", "-1"], "--max-restarts: must be"),
        (["conv-net", "--timeout", "0"], "--timeout: must be a positive number"),
        (["conv-net", "--local-workers", "3"], "--local-workers 3 is more than --workers 2"),
        (["conv-net", "--keys", "/nonexistent"], "--keys: cannot read the server's keys"),
    ],
)
def test_bad_flags_exit_2_before_starting_anything(args, message):
    result = run([*LAUNCH, *args], timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert "started" not in result.stdout + result.stderr


def test_help_explains_every_flag():
    result = run([*LAUNCH, "--help"], timeout=60)
    assert result.returncode == 0
    for flag in (
        "--workers",
        "--single-process",
        "--buckets",
        "--shards",
        "--epochs",
        "--batch-size",
        "--lr",
        "--seed",
        "--max-steps",
        "--dataset",
        "--data-dir",
        "--save",
        "--metrics",
        "--checkpoint-dir",
        "--resume",
        "--timeout",
        "--join-timeout",
        "--on-worker-failure",
        "--max-restarts",
        "--bind",
        "--keys",
        "--local-workers",
        "launch keygen DIR",
    ):
        assert flag in result.stdout, flag


def test_the_launch_script_is_installed():
    script = shutil.which("launch", path=os.path.dirname(sys.executable))
    assert script is not None
    result = run([script, "--help"], timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: launch")


def test_a_killed_server_resumes_bitwise_with_another_worker_count(mnist_dir, tmp_path, running):
    common = ["conv-net", "--epochs", "1", "--data-dir", str(mnist_dir)]
    full = tmp_path / "full.npz"
    assert (
        run([*LAUNCH, *common, "--workers", "2", "--max-steps", "300", "--save", str(full)]).returncode == 0
    )

    ckdir = tmp_path / "ck"
    job = running(
        [
            *common,
            "--workers",
            "2",
            "--max-steps",
            "2000",
            "--checkpoint-dir",
            str(ckdir),
            "--checkpoint-every",
            "50",
            "--max-restarts",  # no restarts: the server stays dead (test_server_restart.py: it comes back)
            "0",
        ]
    )
    deadline = time.monotonic() + 120
    while not (ckdir / "step-000000100.npz").exists():
        assert time.monotonic() < deadline and job.process.poll() is None, "no checkpoint at step 100"
        time.sleep(0.01)
    job.wait_for(r"started worker 1")
    pids = job.pids()
    os.kill(pids["server"], signal.SIGKILL)
    assert job.finish(timeout=15) == 1
    assert any(f"--resume {ckdir}" in line for line in job.seen), job.seen
    assert wait_gone(list(pids.values()), timeout=5) == []

    resumed = tmp_path / "resumed.npz"
    args = [*common, "--workers", "4", "--max-steps", "300", "--resume", str(ckdir), "--save", str(resumed)]
    result = run([*LAUNCH, *args])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resumed from" in result.stdout
    assert same_bits(load_npz(full), load_npz(resumed))


def test_keygen_writes_a_key_set_once(tmp_path):
    from numpy_cnn.distributed import keys

    folder = tmp_path / "keys"
    result = run([*LAUNCH, "keygen", str(folder)], timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted(keys.FILES)
    for name in ("server.key_secret", "worker.key_secret"):
        assert (folder / name).stat().st_mode & 0o077 == 0, name  # nobody else may read a secret
    server, worker = keys.read(folder, keys.SERVER), keys.read(folder, keys.WORKER)
    assert server.peer_public == worker.public and worker.peer_public == server.public
    again = run([*LAUNCH, "keygen", str(folder)], timeout=60)
    assert again.returncode == 2 and "already holds" in again.stderr
    assert keys.read(folder, keys.SERVER) == server  # not overwritten
