"""--log-every: step lines in --metrics, every N steps and at each epoch's end, read back as the
finished run saw them (numpy_cnn/records.py), also after a resume."""

from __future__ import annotations

import json

import pytest

from numpy_cnn.config import Config
from numpy_cnn.records import MetricsError, read_run
from numpy_cnn.steplog import StepLog
from numpy_cnn.train import train

STEP_KEYS = {"step", "epoch", "steps", "loss", "train_acc", "lr"}
SPLIT_KEYS = {"step_ms", "compute_ms", "comm_ms", "update_ms", "exposed_comm_ms"}


def test_a_line_every_n_steps_over_those_steps():
    lines = []
    log = StepLog(3, lines.append)
    for step in range(1, 8):
        log.add(step, 1, 0.1 * step, loss=2.0 * step, correct=step, samples=4)
    log.flush()  # the epoch ends after step 7: its last step gets a line of its own
    log.flush()  # nothing left: no line
    assert [(r["step"], r["steps"]) for r in lines] == [(3, 3), (6, 3), (7, 1)]
    assert lines[0] == {
        "step": 3,
        "epoch": 1,
        "steps": 3,
        "loss": 1.0,
        "train_acc": 0.5,
        "lr": 0.30000000000000004,
    }
    assert StepLog(None, lines.append).add(1, 1, 0.1, 1.0, 1, 1) is None and len(lines) == 3


def test_the_split_of_a_step_in_ms_and_unknown_exposed_time():
    lines = []
    log = StepLog(2, lines.append)
    split = {"compute": 0.010, "comm": 0.004, "update": 0.001}
    log.add(1, 1, 0.1, 1.0, 1, 2, split=split, exposed=0.002)
    log.add(2, 1, 0.1, 1.0, 1, 2, split=split, exposed=0.004)
    log.add(3, 1, 0.1, 1.0, 1, 2, split=split, exposed=None)  # a worker on another machine
    log.add(4, 1, 0.1, 1.0, 1, 2, split=split, exposed=0.004)
    first, second = lines
    assert set(first) == STEP_KEYS | SPLIT_KEYS
    assert (first["step_ms"], first["compute_ms"], first["comm_ms"], first["update_ms"]) == (15, 10, 4, 1)
    assert first["exposed_comm_ms"] == 3.0 and second["exposed_comm_ms"] is None


def metrics_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def fc_config(mnist_dir, tmp_path, **kw) -> Config:
    # batches of 6000: 10 steps an epoch, so a short run crosses epochs
    return Config("fc-net", epochs=2, batch_size=6000, data_dir=str(mnist_dir), **kw)


def test_serial_training_writes_step_lines_every_n_steps_and_at_each_epoch_end(mnist_dir, tmp_path):
    metrics = tmp_path / "m.jsonl"
    train(
        fc_config(mnist_dir, tmp_path, metrics=str(metrics), log_every=4), progress=False, log=lambda s: None
    )
    lines = metrics_lines(metrics)
    assert lines[0]["type"] == "config" and lines[0]["log_every"] == 4
    kinds = [(r["type"], r["step"]) for r in lines[1:]]
    assert kinds == [
        ("step", 4),
        ("step", 8),
        ("step", 10),  # the epoch's last steps, before its line: a step line never spans two epochs
        ("epoch", 10),
        ("step", 12),
        ("step", 16),
        ("step", 20),
        ("epoch", 20),
    ]
    steps = [r for r in lines if r["type"] == "step"]
    assert all(set(r) == {"type"} | STEP_KEYS for r in steps)
    assert [r["steps"] for r in steps] == [4, 4, 2, 2, 4, 4] and [r["epoch"] for r in steps] == [1] * 3 + [
        2
    ] * 3
    assert steps[-1]["loss"] < steps[0]["loss"] and 0 < steps[-1]["train_acc"] <= 1
    assert steps[-1]["lr"] < steps[0]["lr"] <= 2e-3  # the cosine schedule, as used at that step
    # the steps of an epoch add up to its line: the same samples
    epoch = lines[4]
    mean = sum(r["loss"] * r["steps"] for r in steps[:3]) / 10
    assert mean == pytest.approx(epoch["loss"], rel=1e-5)


def test_a_resumed_run_supersedes_the_lines_after_its_checkpoint(mnist_dir, tmp_path):
    full = tmp_path / "full.jsonl"
    train(fc_config(mnist_dir, tmp_path, metrics=str(full), log_every=4), progress=False, log=lambda s: None)

    metrics, ckpt = tmp_path / "m.jsonl", tmp_path / "ckpt"
    first = fc_config(
        mnist_dir, tmp_path, metrics=str(metrics), log_every=4, checkpoint_dir=str(ckpt), checkpoint_every=5
    )
    first.max_steps = 13
    train(first, progress=False, log=lambda s: None)
    for newer in sorted(ckpt.glob("*.npz"))[1:]:  # as if it had stopped at step 9: step 5's remains
        newer.unlink()
    resumed = fc_config(
        mnist_dir, tmp_path, metrics=str(metrics), log_every=4, checkpoint_dir=str(ckpt), resume=str(ckpt)
    )
    train(resumed, progress=False, log=lambda s: None)

    raw = [(r["type"], r.get("step")) for r in metrics_lines(metrics)]
    assert raw.count(("step", 8)) == 2  # written by both runs ...
    run = read_run(str(metrics))  # ... read once: the resumed run's history from step 5 on
    assert [(r["step"], r["steps"]) for r in run.steps] == [
        (4, 4),
        (8, 3),
        (10, 2),
        (12, 2),
        (16, 4),
        (20, 4),
    ]
    assert [r["step"] for r in run.epochs] == [10, 20]
    assert run.config["start_step"] == 5
    # past the resumed epoch the lines are those of the run never interrupted, bit for bit
    uninterrupted = read_run(str(full))
    assert run.steps[3:] == uninterrupted.steps[3:]
    timeless = [
        {k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
        for r in (run.epochs[1], uninterrupted.epochs[1])
    ]
    assert timeless[0] == timeless[1]


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "no epoch or step records"),
        ('{"type": "config", "model": "fc-net"}\n', "no epoch or step records"),
        ('{"type": "config"}\nnot json\n', "m.jsonl, line 2: not JSON"),
        ('{"type": "config"}\n\n[1, 2]\n', "m.jsonl, line 3: not a metrics record"),
        ('{"type": "epoch", "epoch": 1, "step": 5}\n', 'line 1: a epoch record needs a number "loss"'),
        ('{"type": "step", "step": "7", "loss": 1, "train_acc": 0}\n', "needs a number \"step\", got '7'"),
    ],
)
def test_a_bad_metrics_file_is_named_with_its_line(tmp_path, text, message):
    path = tmp_path / "m.jsonl"
    path.write_text(text)
    with pytest.raises(MetricsError, match=message.replace("[", r"\[").replace("(", r"\(")):
        read_run(str(path))


def test_a_missing_or_binary_metrics_file_is_named(tmp_path):
    with pytest.raises(MetricsError, match="nope.jsonl: no such file"):
        read_run(str(tmp_path / "nope.jsonl"))
    with pytest.raises(MetricsError, match="is a folder"):
        read_run(str(tmp_path))
    (tmp_path / "w.npz").write_bytes(b"PK\x03\x04\xff\xfe\x00")
    with pytest.raises(MetricsError, match="w.npz: not a text file"):
        read_run(str(tmp_path / "w.npz"))
