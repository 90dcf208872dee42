"""--dataset PATH end to end: checked before a run starts (exit 2, naming the file and the array),
trained by `python -m numpy_cnn.train` and by `launch` to the same bits, agreed on by the workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from own_sets import make_set, write_npy, write_npz

from numpy_cnn.cli import build_parser, parse_config
from numpy_cnn.config import Config
from numpy_cnn.data import datasets, load
from numpy_cnn.distributed import agreement
from numpy_cnn.models import build
from numpy_cnn.train import train

TRAIN = [sys.executable, "-m", "numpy_cnn.train"]
LAUNCH = [sys.executable, "-m", "numpy_cnn.launch"]


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


pytestmark = pytest.mark.usefixtures("own_cache")  # tests/conftest.py


@pytest.fixture(scope="module")
def learnable(tmp_path_factory) -> Path:
    """A folder with one learnable set as set.npz and as the .npy folder npy/."""
    folder = tmp_path_factory.mktemp("own")
    given = make_set()
    write_npz(folder / "set.npz", given)
    write_npy(folder / "npy", given)
    return folder


def weights(path: Path) -> dict[str, bytes]:
    """The arrays of a --save file, without its metadata (which names the data set's path)."""
    with np.load(path) as f:
        return {k: f[k].tobytes() for k in f.files if k != "meta"}


def test_serial_training_and_launch_learn_your_own_data_with_the_same_bits(learnable, tmp_path):
    # relative paths, run from the data's folder: the config carries them made absolute
    common = ["fc-net", "--epochs", "2", "--seed", "1", "--shards", "4"]
    serial = run(
        [*TRAIN, *common, "--dataset", "set.npz", "--save", str(tmp_path / "serial.npz"),
         "--metrics", str(tmp_path / "serial.jsonl")],
        cwd=learnable,
    )  # fmt: skip
    assert serial.returncode == 0, serial.stderr
    assert f"fc-net on {learnable / 'set.npz'} (a .npz file: 600 train and 200 test samples" in serial.stdout
    job = run(
        [*LAUNCH, *common, "--dataset", "npy", "--workers", "2", "--save", str(tmp_path / "launch.npz"),
         "--metrics", str(tmp_path / "launch.jsonl")],
        cwd=learnable,
    )  # fmt: skip
    assert job.returncode == 0, job.stdout + job.stderr
    assert weights(tmp_path / "serial.npz") == weights(tmp_path / "launch.npz")
    for name, dataset in (("serial", "set.npz"), ("launch", "npy")):
        lines = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert lines[0]["dataset"] == str(learnable / dataset)
        # 20 steps of fc-net find the ten patterns under the noise (0.995 to 1.0 for seeds 0 to 2)
        assert lines[-1]["epoch"] == 2 and lines[-1]["test_acc"] >= 0.95, name
    # the saved file names the data set by its absolute path: evaluate finds it from anywhere
    evaluated = run([sys.executable, "-m", "numpy_cnn.evaluate", "serial.npz", "--json"], cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] == lines[-1]["test_acc"]


def test_shifts_move_images_with_a_channel_axis_as_without(tmp_path):
    given = make_set(n_train=256, n_test=20)
    with_axis = {**given, "x_train": given["x_train"][:, None], "x_test": given["x_test"][:, None]}
    nets = []
    for name, arrays_ in (("hw", given), ("chw", with_axis)):
        config = Config(
            model="conv-net", dataset=str(write_npz(tmp_path / f"{name}.npz", arrays_)), max_steps=2
        )
        config.check_data()
        assert config.max_shift == 2
        nets.append(train(config, progress=False, log=lambda line: None)[0])
    assert all(a.data.tobytes() == b.data.tobytes() for a, b in zip(*(n.parameters for n in nets)))


def _flat(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "flat.npz", make_set(40, 10, shape=(784,)))


def _small_images(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "small.npz", make_set(40, 10, shape=(12, 12)))


def _twelve_classes(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "twelve.npz", make_set(48, 12, classes=12))


def _negative_label(tmp_path: Path) -> Path:
    given = make_set(40, 10)
    given["y_train"][5] = -1
    return write_npz(tmp_path / "negative.npz", given)


@pytest.mark.parametrize(
    "make,args,message",
    [
        (_flat, ["fc-net", "--shift", "2"], "--shift 2: {path} holds flat samples of shape (784,); random "
         "shifts apply to images only"),
        (_flat, ["conv-net", "--shift", "0"], "samples of shape (784,), but conv-net takes (1, 28, 28)"),
        (_small_images, ["fc-net"], "--dataset {path}: samples of shape (1, 12, 12), but fc-net takes"),
        (_twelve_classes, ["fc-net"], "12 classes (labels up to 11), but fc-net has 10 outputs"),
        (_negative_label, ["fc-net"], "--dataset: {path}: y_train has label -1 at sample 5"),
        (_flat, ["fc-net", "--data-dir", "."], "--data-dir is for the built-in data sets"),
    ],
)  # fmt: skip
def test_data_a_run_cannot_use_is_a_flag_error(tmp_path, capsys, make, args, message):
    path = make(tmp_path)
    with pytest.raises(SystemExit) as e:
        parse_config(build_parser(), [*args, "--dataset", str(path)])
    assert e.value.code == 2
    assert message.format(path=path) in capsys.readouterr().err


def test_an_unknown_name_is_neither_built_in_nor_a_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        parse_config(build_parser(), ["fc-net", "--dataset", "cifar"])
    err = capsys.readouterr().err
    assert (
        "--dataset cifar: no such file or folder, and not a built-in data set (fashion-mnist, mnist)" in err
    )


@pytest.mark.parametrize("command", [TRAIN, [*LAUNCH, "--workers", "2"]])
def test_a_bad_set_stops_the_command_before_it_starts(tmp_path, command):
    given = make_set(40, 10)
    given["x_test"] = given["x_test"].astype(np.float32)
    given["x_test"][3, 1, 2] = np.inf
    path = write_npz(tmp_path / "bad.npz", given)
    result = run([*command, "fc-net", "--dataset", "bad.npz"], cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert f"--dataset: {path}: x_test has NaN or Inf in sample 3" in result.stderr
    assert "started" not in result.stdout + result.stderr


def test_workers_with_other_data_refuse_the_job(tmp_path):
    given = make_set(40, 10)
    ours = write_npz(tmp_path / "ours.npz", given)
    same = write_npy(tmp_path / "same", given)  # the same arrays in another form
    given["y_test"][0] = (given["y_test"][0] + 1) % 10
    other = write_npz(tmp_path / "other.npz", given)
    net = build("fc-net")
    server = agreement.identity(net, str(ours))
    assert server["data"] == f"{ours}, sha256 {load(str(ours)).digest[:16]}"
    assert server["data"].split(", ")[1] == agreement.identity(net, str(same))["data"].split(", ")[1]
    with pytest.raises(agreement.Disagreement, match=f"data differs: the server has {ours}, sha256 "):
        agreement.check(server, agreement.identity(net, str(other)))


def test_the_built_in_sets_say_what_a_sample_is(mnist_dir):
    data = load("mnist", str(mnist_dir))
    assert data.sample_shape == (1, 28, 28) and data.classes == 10
    assert datasets.is_builtin("mnist") and not datasets.is_builtin("./mnist")
