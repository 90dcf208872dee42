"""Saved models: a --save file says what it holds, old files still load, a checkpoint reads as a
model, and --init-from starts a new run (serial or launch) from saved weights."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from numpy_cnn import checkpoint, models, saved
from numpy_cnn.config import Config
from numpy_cnn.optim import Adam
from numpy_cnn.train import train


def npz(path) -> dict[str, bytes]:
    with np.load(path) as f:
        return {k: f[k].tobytes() for k in f.files}


def quiet(config: Config):
    return train(config, progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "fc.npz"
    net, _ = quiet(Config("fc-net", max_steps=20, seed=3, data_dir=str(mnist_dir), save=str(path)))
    return path, net


def test_a_save_file_says_what_it_holds_and_rebuilds_alone(trained):
    path, net = trained
    s = saved.read(path)
    assert s.meta == {
        "format": saved.FORMAT,
        "model": "fc-net",
        "sample_shape": [784],
        "classes": 10,
        "dtype": "float32",
        "dataset": "mnist",
        "step": 20,
    }
    rebuilt, _ = saved.load_model(path)
    assert [p.data.tobytes() for p in rebuilt.parameters] == [p.data.tobytes() for p in net.parameters]
    # Net.load still reads it (and skips the metadata)
    plain = models.build("fc-net", seed=9)
    plain.load(path)
    assert all(np.array_equal(a.data, b.data) for a, b in zip(plain.parameters, net.parameters))


def test_a_file_from_before_the_metadata_loads_when_the_model_is_named(trained, tmp_path):
    _, net = trained
    old = tmp_path / "old.npz"
    net.save(old)  # weights only, as --save wrote them before
    with pytest.raises(saved.SavedModelError, match=f"{old}: the file does not say which model.*--model"):
        saved.load_model(old)
    rebuilt, s = saved.load_model(old, "fc-net")
    assert s.meta == {} and all(
        np.array_equal(a.data, b.data) for a, b in zip(rebuilt.parameters, net.parameters)
    )
    with pytest.raises(saved.SavedModelError, match=f"{old}: parameters do not match"):
        saved.load_model(old, "conv-net")


def test_a_checkpoint_loads_as_a_model(trained, tmp_path):
    _, net = trained
    path = checkpoint.save_run(
        tmp_path, Config("fc-net").identity(), 20, 0, 20, 938, net, Adam(net.parameters)
    )
    rebuilt, s = saved.load_model(path)
    assert s.model == "fc-net" and s.meta["step"] == 20
    assert all(np.array_equal(a.data, b.data) for a, b in zip(rebuilt.parameters, net.parameters))


@pytest.mark.parametrize(
    "content,message",
    [
        (b"not a zip file", "not a readable .npz file"),
        (None, "no such file"),
    ],
)
def test_a_bad_file_is_named(tmp_path, content, message):
    path = tmp_path / "w.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(saved.SavedModelError, match=f"{path}: {message}"):
        saved.load_model(path)


def test_metadata_of_another_format_is_refused(trained, tmp_path):
    _, net = trained
    path = tmp_path / "future.npz"
    saved.save(path, net, {"format": 99, "model": "fc-net"})
    with pytest.raises(saved.SavedModelError, match="saved-model format 99"):
        saved.read(path)


def test_init_from_starts_serial_and_launch_from_the_same_weights(trained, mnist_dir, tmp_path):
    path, net = trained
    common = ["fc-net", "--max-steps", "15", "--seed", "4", "--shards", "2", "--data-dir", str(mnist_dir)]
    out = {}
    for name, command in (
        ("serial", [sys.executable, "-m", "numpy_cnn.train"]),
        ("launch", [sys.executable, "-m", "numpy_cnn.launch", "--workers", "2"]),
    ):
        out[name] = tmp_path / f"{name}.npz"
        args = [*command, *common, "--init-from", str(path), "--save", str(out[name])]
        r = subprocess.run(args, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"initial weights from {path} (step 20)" in r.stdout + r.stderr
    assert npz(out["serial"]) == npz(out["launch"])
    fresh = tmp_path / "fresh.npz"
    quiet(Config("fc-net", max_steps=15, seed=4, shards=2, data_dir=str(mnist_dir), save=str(fresh)))
    assert npz(fresh) != npz(out["serial"])  # the seed's weights were not the starting point
    s = saved.read(out["serial"])
    assert s.meta["step"] == 15 and json.loads(json.dumps(s.meta))["model"] == "fc-net"


def test_init_from_must_fit_the_model(trained, mnist_dir, tmp_path):
    path, _ = trained
    for bad, message in (
        (path, f"--init-from {path}: parameters do not match"),
        (tmp_path / "no.npz", "no such file"),
    ):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "numpy_cnn.train",
                "conv-net",
                "--init-from",
                str(bad),
                "--data-dir",
                str(mnist_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and message in r.stderr, r.stderr


def test_a_checkpoint_of_your_own_model_rebuilds_from_the_file_alone(tmp_path, own_cache):
    from own_sets import make_set, write_npz

    from numpy_cnn.api import fit

    data = write_npz(tmp_path / "set.npz", make_set(n_train=128, n_test=64, classes=3, shape=(6, 6)))
    (tmp_path / "mine.py").write_text(
        "from numpy_cnn import Flatten, Linear, Net\n\n"
        "def net(rng, sample_shape, classes):\n"
        "    return Net([Flatten(), Linear(sample_shape[-1] * sample_shape[-2], classes, rng=rng)])\n"
    )
    net, _ = fit(
        f"{tmp_path / 'mine.py'}:net",
        dataset=str(data),
        max_steps=3,
        checkpoint_dir=str(tmp_path / "ck"),
        progress=False,
        log=lambda s: None,
    )
    path = checkpoint.latest(tmp_path / "ck").path
    rebuilt, s = saved.load_model(path)
    assert s.meta["sample_shape"] == [1, 6, 6] and s.meta["classes"] == 3
    assert [p.data.tobytes() for p in rebuilt.parameters] == [p.data.tobytes() for p in net.parameters]
