"""Serial training on the real MNIST: accuracy, exact reproducibility, output files, CLI errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from numpy_cnn import models
from numpy_cnn.config import Config
from numpy_cnn.train import main, train


@pytest.mark.parametrize("model,steps", [("fc-net", 300), ("conv-net", 400)])
def test_a_few_hundred_steps_reach_95_percent(mnist_dir, model, steps):
    _, history = train(
        Config(model, epochs=1, max_steps=steps, data_dir=str(mnist_dir)),
        progress=False,
        log=lambda s: None,
    )
    assert history[-1]["step"] == steps
    assert history[-1]["test_acc"] >= 0.95


def test_same_seed_same_run_bit_for_bit(mnist_dir, tmp_path):
    def run(name, seed):
        path = tmp_path / f"{name}.npz"
        _, hist = train(
            Config(
                "conv-net",
                epochs=2,
                max_steps=40,
                seed=seed,
                batch_size=50,
                data_dir=str(mnist_dir),
                save=str(path),
            ),
            progress=False,
            log=lambda s: None,
        )
        with np.load(path) as f:
            return {k: f[k] for k in f.files}, hist

    (a, ha), (b, hb), (c, _) = run("a", 3), run("b", 3), run("c", 4)
    assert ha[-1]["loss"] == hb[-1]["loss"]
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert any(a[k].tobytes() != c[k].tobytes() for k in a)


def test_cli_writes_metrics_and_a_loadable_model(mnist_dir, tmp_path):
    save, metrics = tmp_path / "fc.npz", tmp_path / "m.jsonl"
    # 940 steps of batch 64 cross the first epoch boundary (938 steps) into the second
    code = main(
        [
            "fc-net",
            "--epochs",
            "2",
            "--max-steps",
            "940",
            "--data-dir",
            str(mnist_dir),
            "--save",
            str(save),
            "--metrics",
            str(metrics),
        ]
    )
    assert code == 0
    settings, *lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    # the first line holds every setting, resolved; then one line per epoch
    assert settings["type"] == "config" and settings["model"] == "fc-net" and settings["shards"] == 1
    assert all(r["type"] == "epoch" for r in lines)
    assert [r["epoch"] for r in lines] == [1, 2] and [r["step"] for r in lines] == [938, 940]
    assert set(lines[0]) >= {
        "epoch",
        "step",
        "loss",
        "train_acc",
        "test_acc",
        "seconds",
        "samples_per_s",
    }
    net = models.build("fc-net", seed=99)
    net.load(save)
    assert lines[0]["test_acc"] > 0.9


@pytest.mark.parametrize(
    "args,message",
    [
        (["resnet"], "unknown model 'resnet'; known models: conv-net, fc-net, or your own"),
        (["fc-net", "--batch-size", "0"], "must be a positive integer"),
        (["fc-net", "--lr", "-1"], "must be a positive number"),
        (["fc-net", "--dataset", "cifar"], "--dataset cifar: no such file or folder"),
        (["fc-net", "--save", "/nonexistent-dir/x.npz"], "does not exist or is not writable"),
        (["fc-net", "--data-dir", "/does/not/exist"], "--data-dir /does/not/exist: no such folder"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, message):
    r = subprocess.run(
        [sys.executable, "-m", "numpy_cnn.train", *args], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert message in r.stderr and r.stdout == ""
    # the error and a pointer to --help, not argparse's usage block
    error, pointer = r.stderr.splitlines()
    assert error.startswith("python -m numpy_cnn.train: error: ") and "usage" not in r.stderr
    assert pointer == "(see 'python -m numpy_cnn.train --help' for every flag)"


def test_a_run_says_what_it_does_and_ends_with_a_summary(mnist_dir, tmp_path):
    save = tmp_path / "w.npz"
    r = subprocess.run(
        [sys.executable, "-m", "numpy_cnn.train", "conv-net", "--max-steps", "20", "--save", str(save)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NUMPY_CNN_DATA": str(mnist_dir)},
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == (
        f"conv-net on mnist (from NUMPY_CNN_DATA={mnist_dir}): 12 epochs, at most 20 steps, batch 64 "
        "in 2 micro-shards, lr 0.002 cosine, shifts up to 2 px, seed 0"
    )
    assert re.fullmatch(
        r"done: best test accuracy \d+\.\d\d% \(epoch 1\), final \d+\.\d\d% after step 20, in [\d.]+ s; "
        rf"weights in {re.escape(str(save))}",
        lines[-1],
    ), lines[-1]
    assert save.is_file()


def test_an_interrupted_run_says_how_to_continue(mnist_dir, tmp_path):
    ckdir = tmp_path / "ck"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "numpy_cnn.train",
            "conv-net",
            "--checkpoint-dir",
            str(ckdir),
            "--checkpoint-every",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NUMPY_CNN_DATA": str(mnist_dir)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )
    try:
        deadline = time.monotonic() + 60
        while not list(ckdir.glob("step-*.npz")) and time.monotonic() < deadline:
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 130, err[-3000:]  # (once in CI: 1; what it printed then was not kept)
    assert f"to continue, run the same command with --resume {ckdir}" in err


def test_help_explains_every_flag():
    r = subprocess.run(
        [sys.executable, "-m", "numpy_cnn.train", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0
    for flag in [
        "--epochs",
        "--batch-size",
        "--lr",
        "--lr-schedule",
        "--seed",
        "--max-steps",
        "--dataset",
        "--data-dir",
        "--save",
        "--metrics",
    ]:
        assert flag in r.stdout


@pytest.mark.parametrize("model", ["fc-net", "conv-net"])
@pytest.mark.parametrize("shards,n", [(1, 64), (2, 64), (4, 50), (4, 3)])
def test_sharded_step_gives_the_full_batch_gradient(model, shards, n):
    # float64: the micro-shards' tree sum is the whole batch's gradient up to rounding; n=3 leaves
    # a shard empty
    from numpy_cnn.loss import CrossEntropyLoss
    from numpy_cnn.models import input_shape
    from numpy_cnn.shards import ShardedStep

    config = Config(model, shards=shards, dtype="float64", threads=2)
    rng = np.random.default_rng(0)
    x = rng.random((n, *input_shape(model)))
    y = rng.integers(0, 10, n)
    net, reference = models.build(model, dtype=np.float64), models.build(model, dtype=np.float64)
    step = ShardedStep(config, net)
    loss_sum, _ = step(x, y)
    step.close()
    loss = CrossEntropyLoss()
    preds = reference.forward(x)
    reference.backward(loss.grad(preds, y))
    assert loss_sum == pytest.approx(loss.loss(preds, y) * n, rel=1e-12)
    for got, want in zip(net.parameters, reference.parameters):
        scale = np.abs(want.grad).max()
        np.testing.assert_allclose(got.grad, want.grad, rtol=0, atol=1e-10 * scale)


def test_thread_count_does_not_change_the_bits(mnist_dir, tmp_path):
    weights = []
    for threads in (1, 2, 3):
        path = tmp_path / f"t{threads}.npz"
        config = Config(
            "conv-net", max_steps=8, shards=4, threads=threads, data_dir=str(mnist_dir), save=str(path)
        )
        train(config, progress=False, log=lambda s: None)
        with np.load(path) as f:
            weights.append({k: f[k].tobytes() for k in f.files})
    assert weights[0] == weights[1] == weights[2]


def test_the_resume_hint_fits_the_run(tmp_path):
    from numpy_cnn.cli import resume_hint

    assert "with --checkpoint-dir DIR" in resume_hint(Config("fc-net"))
    assert "has to start again" in resume_hint(Config("fc-net", checkpoint_dir=str(tmp_path)))
    resumed = Config("fc-net", resume=str(tmp_path / "old"), checkpoint_dir=str(tmp_path))
    assert (
        resume_hint(resumed)
        == f"to continue, run the same command again (it resumes from {tmp_path / 'old'})"
    )
