"""A server that comes back by itself: with --checkpoint-dir, `launch` restarts a server that was
killed or got stuck from its newest checkpoint, at the same address; the workers rejoin it, and the
weights come out as an undisturbed run's, bit for bit. Without checkpoints the job stops as before."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from test_launch import (
    LAUNCH,
    load_npz,
    run,
    running,  # noqa: F401 (the fixture)
    same_bits,
    wait_for_file,
    wait_gone,
)

STEPS = ["--max-steps", "300", "--checkpoint-every", "20", "--timeout", "2"]


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory, mnist_dir) -> dict:
    """The weights of the run below when nothing happens to it: the same flags, its own folder."""
    folder = tmp_path_factory.mktemp("undisturbed")
    args = ["--workers", "2", "conv-net", *STEPS, "--data-dir", str(mnist_dir)]
    args += ["--checkpoint-dir", str(folder / "ck"), "--save", str(folder / "w.npz")]
    result = run([*LAUNCH, *args], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return load_npz(folder / "w.npz")


@pytest.mark.parametrize(
    "failure,transport",
    [("killed", "ipc"), ("stuck", "tcp")],  # tcp: the restarted server binds the OS-picked port again
)
def test_a_server_that_dies_or_hangs_comes_back_and_the_weights_are_unchanged(
    mnist_dir, tmp_path, running, undisturbed, failure, transport
):
    save, ckdir = tmp_path / "w.npz", tmp_path / "ck"
    args = ["--workers", "2", "conv-net", *STEPS, "--data-dir", str(mnist_dir), "--save", str(save)]
    job = running([*args, "--checkpoint-dir", str(ckdir), "--local-transport", transport])
    wait_for_file(ckdir / "step-000000100.npz", job)  # mid-run
    first = job.pids()
    os.kill(first["server"], signal.SIGKILL if failure == "killed" else signal.SIGSTOP)
    start = time.monotonic()
    assert job.finish(timeout=60) == 0, "\n".join(job.seen)
    log = "\n".join(job.seen)
    what = "was killed by SIGKILL;" if failure == "killed" else r"stopped responding \(no word from it for "
    what += r".* restarting it from checkpoint step-\d{9} \(1 of --max-restarts 3\)"
    assert re.search(rf"launch: server \(pid {first['server']}\) {what}", log), log
    if failure == "stuck":  # found within --timeout, not after the workers' --join-timeout
        assert "killing it and restarting it" in log and time.monotonic() - start < 40
    for rank in (0, 1):  # the same processes, welcomed back; nothing was restarted but the server
        assert f"[worker {rank}] worker {rank}: welcomed back by the server at {transport}://" in log, log
    assert [name for name, _ in job.started()].count("server") == 2
    assert {name: pid for name, pid in job.started() if name != "server"} == {
        "worker 0": first["worker 0"],
        "worker 1": first["worker 1"],
    }
    assert re.search(r"\[server\] resumed from .*step-\d{9}\.npz at step \d+", log)
    assert same_bits(load_npz(save), undisturbed)
    assert wait_gone([pid for _, pid in job.started()], timeout=5) == []


def test_a_server_killed_once_more_than_the_restarts_allow_stops_the_job(mnist_dir, tmp_path, running):
    ckdir = tmp_path / "ck"
    args = ["--workers", "2", "conv-net", "--checkpoint-dir", str(ckdir), "--checkpoint-every", "20"]
    job = running([*args, "--timeout", "2", "--max-restarts", "1", "--data-dir", str(mnist_dir)])
    wait_for_file(ckdir / "step-000000040.npz", job)
    os.kill(job.pids()["server"], signal.SIGKILL)
    job.wait_for(r"restarting it from checkpoint step-\d{9} \(1 of --max-restarts 1\)")
    for _ in range(2):  # both workers are back, in either order
        job.wait_for(r"\[server\] server: worker \d is ready")
    os.kill(job.pids()["server"], signal.SIGKILL)
    assert job.finish(timeout=20) == 1
    log = "\n".join(job.seen)
    assert "launch: error: server was killed by SIGKILL (no restarts left: --max-restarts 1)" in log, log
    assert f"launch: to continue, run the same command with --resume {ckdir}" in log
    assert wait_gone([pid for _, pid in job.started()], timeout=5) == []
