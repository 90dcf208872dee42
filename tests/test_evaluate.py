"""Evaluating a saved model: the accuracy training reported, per class, the confusion matrix;
Net.predict in batches."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from numpy_cnn import layers, models
from numpy_cnn.config import Config
from numpy_cnn.evaluate import confusion, report
from numpy_cnn.net import Net
from numpy_cnn.train import train


def test_predict_is_forward_in_batches_without_dropout():
    rng = np.random.default_rng(0)
    net = Net([layers.Linear(6, 5, rng=rng), layers.Dropout(0.5, rng=rng), layers.Linear(5, 3, rng=rng)])
    x = rng.standard_normal((25, 6)).astype(np.float32)
    scores = net.predict(x, batch_size=4)
    net.eval()
    assert scores.shape == (25, 3) and np.array_equal(scores, net.forward(x))
    net.train()
    assert net.predict(x).tobytes() == scores.tobytes() and net.training  # the mode is restored
    with pytest.raises(ValueError, match="batch_size"):
        net.predict(x, batch_size=0)


def test_the_confusion_matrix_counts_true_against_predicted():
    net = Net([layers.Reshape(-1)])  # the "scores" are the inputs: class = argmax of the row
    images = np.eye(3, dtype=np.uint8)[[0, 1, 2, 2, 1]] * 255
    labels = np.array([0, 1, 2, 1, 1])
    matrix = confusion(net, images, labels, (3,), 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 2, 1], [0, 0, 1]]
    result = report(matrix)
    assert result["accuracy"] == pytest.approx(0.8) and result["per_class"] == [
        1.0,
        pytest.approx(2 / 3),
        1.0,
    ]


def test_the_command_reports_what_training_measured(mnist_dir, tmp_path):
    save = tmp_path / "fc.npz"
    _, history = train(
        Config("fc-net", max_steps=100, data_dir=str(mnist_dir), save=str(save)),
        progress=False,
        log=lambda s: None,
    )
    argv = [
        sys.executable,
        "-m",
        "numpy_cnn.evaluate",
        str(save),
        "--model",
        "fc-net",
        "--data-dir",
        str(mnist_dir),
    ]
    r = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["accuracy"] == history[-1]["test_acc"] and result["samples"] == 10000
    assert np.array(result["confusion"]).sum(axis=1).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    text = subprocess.run(argv, capture_output=True, text=True, timeout=120).stdout
    assert text.startswith(f"{save}: test accuracy {100 * result['accuracy']:.2f}% on 10000 samples")
    wrong = subprocess.run([*argv[:4], "--model", "conv-net"], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and f"{save}: holds a fc-net model, not conv-net" in wrong.stderr
    # the file says what it holds: no --model needed
    bare = subprocess.run(
        [*argv[:4], "--data-dir", str(mnist_dir), "--json"], capture_output=True, text=True, timeout=120
    )
    assert bare.returncode == 0 and json.loads(bare.stdout) == result
    assert models.build("fc-net") is not None
