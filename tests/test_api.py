"""numpy_cnn.api.fit, serial training from Python: the command line's bits for the same flags,
any function as the model, and the command line's checks on its options."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from numpy_cnn import Flatten, Linear, Net, ReLU
from numpy_cnn.api import fit


def mlp(rng, sample_shape, classes):
    return Net([Flatten(), Linear(784, 32, rng=rng), ReLU(), Linear(32, classes, rng=rng)])


def test_fit_gives_the_command_lines_weights(mnist_dir, tmp_path):
    flags = {"max_steps": 30, "seed": 4, "shards": 2, "data_dir": str(mnist_dir)}
    argv = ["fc-net", "--max-steps", "30", "--seed", "4", "--shards", "2", "--data-dir", str(mnist_dir)]
    cli = subprocess.run(
        [sys.executable, "-m", "numpy_cnn.train", *argv, "--save", str(tmp_path / "cli.npz")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    lines = []
    net, history = fit("fc-net", save=str(tmp_path / "api.npz"), log=lines.append, progress=False, **flags)
    assert (tmp_path / "api.npz").read_bytes() == (tmp_path / "cli.npz").read_bytes()
    with np.load(tmp_path / "cli.npz") as saved:
        assert all(p.data.tobytes() == saved[k].tobytes() for k, p in net.named_parameters().items())
    assert [r["step"] for r in history] == [30] and history[0]["test_acc"] > 0.8
    assert lines and lines[-1].startswith("epoch 1/14  step 30")


def test_any_function_is_a_model_and_gets_its_files_bits(mnist_dir, tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "from numpy_cnn import Flatten, Linear, Net, ReLU\n\n"
        "def mlp(rng, sample_shape, classes):\n"
        "    return Net([Flatten(), Linear(784, 32, rng=rng), ReLU(), Linear(32, classes, rng=rng)])\n"
    )
    options = {"max_steps": 10, "seed": 1, "data_dir": str(mnist_dir), "progress": False, "log": print}
    by_function, _ = fit(mlp, **options)
    by_file, _ = fit(f"{path}:mlp", **options)
    by_lambda, history = fit(lambda rng, **kw: mlp(rng, **kw), **options)
    for a, b, c in zip(by_function.parameters, by_file.parameters, by_lambda.parameters):
        assert a.data.tobytes() == b.data.tobytes() == c.data.tobytes()
    assert history[0]["step"] == 10


def test_options_are_checked_as_flags_are(mnist_dir, tmp_path):
    with pytest.raises(TypeError, match="unknown option max_step; the options are batch_size, "):
        fit("fc-net", max_step=3)
    with pytest.raises(ValueError, match="--shards must be a positive integer, got 0"):
        fit("fc-net", shards=0, data_dir=str(mnist_dir))
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        fit("resnet", data_dir=str(mnist_dir))
    with pytest.raises(ValueError, match=f"--save {tmp_path}/no/w.npz: folder .* does not exist"):
        fit("fc-net", save=str(tmp_path / "no" / "w.npz"), data_dir=str(mnist_dir))
    with pytest.raises(TypeError, match="model must be a name"):
        fit(3)
