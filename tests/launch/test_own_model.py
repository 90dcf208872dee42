"""Your own model end to end, by file and by module: serial training and `launch` with 1, 2 and 4
worker processes and in one process give the same bits (Dropout included) and learn; a model a
worker cannot import, one that is not a Net, and workers whose definitions differ each get their
error, naming the model. Real processes, real sockets."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from own_sets import make_set, write_npz
from test_launch import LAUNCH, load_npz, run

from numpy_cnn.data import load
from numpy_cnn.distributed.config import JobConfig
from numpy_cnn.distributed.server import ParameterServer
from numpy_cnn.distributed.worker import EXIT_REFUSED

TRAIN = [sys.executable, "-m", "numpy_cnn.train"]
STEPS, ACCURACY = 60, 0.85  # the MLP here reaches 87-88% test accuracy by step 60 (seeds 3, 4)

MLP = """
from numpy_cnn import Dropout, Flatten, Linear, Net, ReLU


def net(rng, sample_shape, classes, hidden=HIDDEN):
    inputs = 1
    for n in sample_shape:
        inputs *= n
    return Net([Flatten(), Linear(inputs, hidden, rng=rng), ReLU(), DROPOUT Linear(hidden, classes, rng=rng)])


def not_a_net(rng):
    return "a string"
"""


def model_source(hidden: int = 64, dropout: float | None = None) -> str:
    """The MLP's source; with `dropout`, a Dropout(p) before the last layer."""
    drop = "" if dropout is None else f"Dropout({dropout}),"
    return textwrap.dedent(MLP).replace("HIDDEN", str(hidden)).replace("DROPOUT", drop)


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory):
    """Where this module's processes remember the sets they have checked: not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def dataset(module_cache, tmp_path_factory) -> SimpleNamespace:
    """The data set every run here trains on, a learnable .npz made here (tests/own_sets.py): as
    flags, as Config keywords, and loaded here (for a server in this process)."""
    path = write_npz(tmp_path_factory.mktemp("data") / "patterns.npz", make_set())
    options = {"dataset": str(path)}
    return SimpleNamespace(flags=["--dataset", str(path)], options=options, data=load(str(path)))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """A folder with a model file (with Dropout) and a package `zoo` with a model module (without)."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "mine.py").write_text(model_source(dropout=0.2))
    (folder / "zoo").mkdir()
    (folder / "zoo" / "__init__.py").write_text("")
    (folder / "zoo" / "nets.py").write_text(model_source())
    return folder


def train_runs(ref: str, flags: list[str], folder: Path, out: Path) -> dict[str, subprocess.CompletedProcess]:
    """The same run serially (at --shards 4), and with `launch` over 1, 2 and 4 workers and in one process."""
    runs = {
        "serial": [*TRAIN, ref, "--shards", "4"],
        "launch 1": [*LAUNCH, "--workers", "1", ref],
        "launch 2": [*LAUNCH, "--workers", "2", ref],
        "launch 4": [*LAUNCH, "--workers", "4", ref],
        "single process": [*LAUNCH, "--single-process", "--workers", "2", ref],
    }
    done = {}
    for name, argv in runs.items():
        path = out / name.replace(" ", "-")
        argv += [*flags, "--save", f"{path}.npz", "--metrics", f"{path}.jsonl"]
        done[name] = subprocess.run(
            argv, cwd=folder, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
        )
    return done


@pytest.mark.parametrize("ref", ["mine.py:net", "zoo.nets:net"], ids=["file", "module"])
def test_your_own_model_trains_to_the_same_bits_in_every_mode(ref, models_dir, dataset, tmp_path):
    flags = [*dataset.flags, "--max-steps", str(STEPS), "--seed", "3"]
    done = train_runs(ref, flags, models_dir, tmp_path)
    for name, result in done.items():
        assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
    weights = {name: load_npz(tmp_path / f"{name.replace(' ', '-')}.npz") for name in done}
    serial = weights["serial"]
    for name, arrays in weights.items():
        assert arrays.keys() == serial.keys() and all(
            arrays[k].tobytes() == serial[k].tobytes() for k in serial
        ), f"{name} differs from serial training"
    for name in done:
        lines = (tmp_path / f"{name.replace(' ', '-')}.jsonl").read_text().splitlines()
        settings, last = json.loads(lines[0]), json.loads(lines[-1])
        where = str(models_dir / "mine.py") + ":net" if ref.startswith("mine") else ref
        assert settings["model"] == where  # a file as its absolute path, a module as written
        assert last["step"] == STEPS and last["test_acc"] >= ACCURACY, (name, last)


def test_dropout_is_on_in_the_file_model(models_dir, dataset, tmp_path):
    """The Dropout net's bits above are not those of the same net that never drops."""
    plain = tmp_path / "plain.py"
    plain.write_text(model_source(dropout=0.0))
    argv = [*dataset.flags, "--max-steps", "5", "--seed", "3", "--shards", "4"]
    for ref, name in ((f"{models_dir / 'mine.py'}:net", "a"), (f"{plain}:net", "b")):
        result = run([*TRAIN, ref, *argv, "--save", str(tmp_path / f"{name}.npz")])
        assert result.returncode == 0, result.stderr
    a, b = load_npz(tmp_path / "a.npz"), load_npz(tmp_path / "b.npz")
    assert a.keys() == b.keys() and any(a[k].tobytes() != b[k].tobytes() for k in a)


def test_a_function_that_does_not_return_a_net_is_named(models_dir, dataset):
    ref = f"{models_dir / 'mine.py'}:not_a_net"
    words = f"model {ref}: the function returned str, not a numpy_cnn.Net"
    serial = run([*TRAIN, ref, *dataset.flags, "--max-steps", "5"])
    assert serial.returncode == 1 and words in serial.stderr, serial.stderr
    job = run([*LAUNCH, "--workers", "2", ref, *dataset.flags, "--max-steps", "5"])
    assert job.returncode == 1, job.stderr
    assert f"launch: error: server exited with code 1: {words}" in job.stderr, job.stderr


def test_a_model_the_launcher_cannot_import_is_a_bad_flag(tmp_path, dataset):
    for ref, words in [
        (f"{tmp_path}/absent.py:net", f"model {tmp_path}/absent.py:net: cannot read"),
        ("no_such_zoo.nets:net", "model no_such_zoo.nets:net: importing no_such_zoo.nets failed"),
    ]:
        result = run([*LAUNCH, "--workers", "2", ref, *dataset.flags], timeout=60)
        assert result.returncode == 2 and f"launch: error: {words}" in result.stderr, result.stderr


def start_worker(endpoint: str, keys: Path, cwd: Path) -> subprocess.Popen:
    argv = [*LAUNCH, "worker", "--connect", endpoint, "--rank", "0", "--keys", str(keys)]
    return subprocess.Popen(
        [*argv, "--join-timeout", "30", "--watch-stdin"],
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def refused(server: ParameterServer, worker: subprocess.Popen, caplog) -> str:
    """Run the server's registration until it gives up; the worker's output."""
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(TimeoutError, match="only workers"):
            server.register()
        out, _ = worker.communicate(timeout=30)
    finally:
        worker.kill()
        worker.wait(timeout=10)
        worker.stdin.close()
    assert worker.returncode == EXIT_REFUSED, out  # refused: the launcher would not restart it
    return out


def test_a_worker_that_cannot_import_the_model_refuses_naming_it(
    models_dir, dataset, server_transport, job_keys, caplog, monkeypatch, tmp_path
):
    monkeypatch.syspath_prepend(str(models_dir))  # this process, the server, finds zoo; the worker will not
    config = JobConfig("zoo.nets:net", workers=1, timeout=1.0, join_timeout=8.0, **dataset.options)
    server = ParameterServer(config, server_transport(), dataset.data)
    worker = start_worker(server.transport.endpoint, job_keys, cwd=tmp_path)
    out = refused(server, worker, caplog)
    words = "model zoo.nets:net: importing zoo.nets failed: ModuleNotFoundError: No module named 'zoo'"
    assert f"worker 0: error: {words} (on this worker)" in out, out
    assert f"worker 0 refused the job: {words}" in caplog.text


def test_a_worker_whose_file_differs_refuses_naming_the_first_difference(
    dataset, server_transport, job_keys, caplog, tmp_path
):
    path = tmp_path / "edited.py"
    path.write_text(model_source(hidden=64))
    ref = f"{path}:net"
    config = JobConfig(ref, workers=1, timeout=1.0, join_timeout=8.0, **dataset.options)
    server = ParameterServer(config, server_transport(), dataset.data)
    path.write_text(model_source(hidden=32))  # edited after the server started, before the worker did
    worker = start_worker(server.transport.endpoint, job_keys, cwd=tmp_path)
    out = refused(server, worker, caplog)
    words = (
        f"model {ref} differs: net.layers[1] is Linear(784, 64) on the server, Linear(784, 32) on this worker"
    )
    assert f"worker 0: error: {words}" in out, out
    assert f"worker 0 refused the job: {words}" in caplog.text
