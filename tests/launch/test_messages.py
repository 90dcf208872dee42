"""What a user of `launch` reads: one-line flag errors, the run's settings, a closing summary,
and hints that fit what went wrong (resume, debugging, a failed final save)."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_launch import (
    LAUNCH,
    load_npz,
    run,
    running,  # noqa: F401 (the fixture)
    same_bits,
    wait_for_file,
)

from numpy_cnn.data.mnist import FILES, find_in


@pytest.mark.parametrize(
    "args,message",
    [
        (["conv-net", "--workers", "3"], "--shards 4 is not divisible by --workers 3"),
        (
            ["resnet"],
            "unknown model 'resnet'; known models: conv-net, fc-net, or your own as PATH.py:FUNCTION",
        ),
        (["conv-net", "--data-dir", "/does/not/exist"], "--data-dir /does/not/exist: no such folder"),
    ],
)
def test_a_bad_flag_is_one_line_and_a_pointer_to_help(args, message):
    result = run([*LAUNCH, *args], timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    error, pointer = result.stderr.splitlines()
    assert error.startswith("launch: error: ") and message in error
    assert pointer == "(see 'launch --help' for every flag)"


def test_an_empty_data_folder_in_the_environment_is_an_error(tmp_path, mnist_dir):
    env = {**os.environ, "NUMPY_CNN_DATA": str(tmp_path)}
    result = subprocess.run([*LAUNCH, "fc-net"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2 and f"NUMPY_CNN_DATA={tmp_path}: none of the four" in result.stderr


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "2000000"])
def test_a_bad_spin_time_in_the_environment_is_an_error(value):
    env = {**os.environ, "NUMPY_CNN_SPIN_US": value}
    result = subprocess.run([*LAUNCH, "fc-net"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert f"NUMPY_CNN_SPIN_US must be whole microseconds from 0 to 1000000, got {value!r}" in result.stderr


def test_a_worker_started_by_hand_checks_the_spin_time_before_it_connects(tmp_path):
    env = {**os.environ, "NUMPY_CNN_SPIN_US": "soon"}
    worker = [*LAUNCH, "worker", "--connect", f"ipc://{tmp_path}/none", "--rank", "0", "--join-timeout", "5"]
    result = subprocess.run(worker, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert "NUMPY_CNN_SPIN_US must be whole microseconds from 0 to 1000000, got 'soon'" in result.stderr


def test_settings_first_and_a_summary_last(mnist_dir, tmp_path):
    save, metrics = tmp_path / "w.npz", tmp_path / "m.jsonl"
    args = ["fc-net", "--max-steps", "20", "--data-dir", str(mnist_dir), "--save", str(save)]
    result = run([*LAUNCH, *args, "--metrics", str(metrics)], timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"fc-net on mnist (from --data-dir {mnist_dir}): 14 epochs, at most 20 steps, batch 64 in 4 "
        "micro-shards over 2 worker processes, lr 0.002 cosine, seed 0"
    )
    assert re.fullmatch(
        r"launch: done: best test accuracy \d+\.\d\d% \(epoch 1\), final \d+\.\d\d% after step 20, "
        rf"in [\d.]+ s; weights in {re.escape(str(save))}, metrics in {re.escape(str(metrics))}",
        lines[-1],
    ), lines[-1]


def test_ctrl_c_says_how_to_resume(mnist_dir, tmp_path, running):
    ckdir = tmp_path / "ck"
    job = running(
        ["conv-net", "--data-dir", str(mnist_dir), "--checkpoint-dir", str(ckdir), "--checkpoint-every", "5"]
    )
    wait_for_file(ckdir / "step-000000005.npz", job)
    job.process.send_signal(signal.SIGINT)
    assert job.finish(timeout=15) == 130
    assert f"launch: to continue, run the same command with --resume {ckdir}" in job.seen


def test_ctrl_c_in_one_process_says_why_and_how_to_resume(mnist_dir, tmp_path, running):
    ckdir = tmp_path / "ck"
    args = ["conv-net", "--single-process", "--data-dir", str(mnist_dir)]
    job = running([*args, "--checkpoint-dir", str(ckdir), "--checkpoint-every", "5"])
    wait_for_file(ckdir / "step-000000005.npz", job)
    job.process.send_signal(signal.SIGINT)
    assert job.finish(timeout=15) == 130
    log = "\n".join(job.seen)
    assert "stopping (interrupted)" in log and "training finished" not in log
    assert f"launch: interrupted; to continue, run the same command with --resume {ckdir}" in log


def test_a_bad_data_file_gets_no_resume_hint(mnist_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in FILES:
        shutil.copy(find_in(mnist_dir, name), data)
    labels = find_in(data, "t10k-labels-idx1-ubyte")
    raw = labels.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    labels.unlink()
    (data / "t10k-labels-idx1-ubyte").write_bytes(raw[:-100])  # truncated
    result = run([*LAUNCH, "fc-net", "--data-dir", str(data)], timeout=120)
    assert result.returncode == 1
    assert "t10k-labels-idx1-ubyte" in result.stdout + result.stderr
    assert "resume" not in result.stderr and "checkpoint" not in result.stderr


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs, cleaned up after: a --save there runs out of space."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "full"
    folder.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.parametrize("mode", ["serial", "launch", "single-process"])
def test_a_failed_final_save_names_the_path_and_keeps_the_weights(mnist_dir, tmp_path, full_disk, mode):
    common = ["fc-net", "--max-steps", "10", "--data-dir", str(mnist_dir)]
    if mode == "serial":
        command = [LAUNCH[0], "-m", "numpy_cnn.train", *common, "--shards", "4"]
    else:
        command = [*LAUNCH, *common] + (["--single-process"] if mode == "single-process" else [])
    reference = tmp_path / "reference.npz"
    assert run([*command, "--save", str(reference)], timeout=120).returncode == 0
    target = full_disk / "w.npz"
    result = run([*command, "--save", str(target)], timeout=120)
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if "error:" in line][0]
    match = re.search(
        rf"--save {re.escape(str(target))}: No space left on device; the trained weights are in (\S+)$", error
    )
    assert match, error
    rescued = Path(match[1])
    try:
        assert same_bits(load_npz(rescued), load_npz(reference))  # nothing was lost
    finally:
        rescued.unlink()
    assert not list(full_disk.iterdir())  # no temporary file left behind
    assert "resume" not in result.stderr  # the training is done: there is nothing to resume
    assert np.isfinite(list(load_npz(reference).values())[0]).all()


def test_a_silent_worker_drop_mentions_debuggers(mnist_dir, tmp_path, running):
    ckdir = tmp_path / "ck"
    args = [
        "conv-net",
        "--workers",
        "2",
        "--data-dir",
        str(mnist_dir),
        "--on-worker-failure",
        "abort",
        "--timeout",
        "2",
    ]
    job = running([*args, "--checkpoint-dir", str(ckdir), "--checkpoint-every", "5"])
    wait_for_file(ckdir / "step-000000005.npz", job)
    os.kill(job.pids()["worker 1"], signal.SIGSTOP)
    assert job.finish(timeout=20) == 1
    log = "\n".join(job.seen)
    assert "a worker paused in a debugger looks the same" in log.lower() and "--single-process" in log


def test_without_room_for_shared_memory_the_workers_get_arrays_and_the_same_bits(
    mnist_dir, tmp_path, full_disk
):
    """The job's private folder on a full file system: the server says it sends arrays instead of
    sharing memory with the workers on its machine, and the weights are those of a run that shares."""
    common = ["conv-net", "--workers", "2", "--max-steps", "12", "--data-dir", str(mnist_dir)]
    shared = run([*LAUNCH, *common, "--save", str(tmp_path / "shared.npz")], timeout=120)
    assert shared.returncode == 0, shared.stdout + shared.stderr
    assert "no shared memory" not in shared.stdout + shared.stderr
    env = {**os.environ, "TMPDIR": str(full_disk)}  # where the launcher makes the job's folder
    result = subprocess.run(
        [*LAUNCH, *common, "--save", str(tmp_path / "arrays.npz")],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no shared memory for the workers on this machine" in result.stdout + result.stderr
    assert "No space left on device" in result.stdout + result.stderr
    with np.load(tmp_path / "shared.npz") as a, np.load(tmp_path / "arrays.npz") as b:
        assert all(a[k].tobytes() == b[k].tobytes() for k in a.files if k != "meta")
