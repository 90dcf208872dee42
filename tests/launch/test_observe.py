"""launch --log-every and --trace: step lines with the split of a step, one trace merged from the
processes' parts, and the same weights as without them."""

from __future__ import annotations

import json
import sys

import pytest
from test_launch import LAUNCH, load_npz, run, same_bits


def inside(inner: dict, outer: dict) -> bool:
    return outer["ts"] <= inner["ts"] and inner["ts"] + inner["dur"] <= outer["ts"] + outer["dur"] + 1e-3


@pytest.mark.parametrize("mode", [["--workers", "2"], ["--workers", "2", "--single-process"]])
def test_step_lines_and_a_trace_leave_the_weights_alone(mnist_dir, tmp_path, mode):
    common = ["conv-net", "--max-steps", "12", "--seed", "4", "--data-dir", str(mnist_dir), *mode]
    plain = run([*LAUNCH, *common, "--save", str(tmp_path / "plain.npz")])
    assert plain.returncode == 0, plain.stdout + plain.stderr
    metrics, trace = tmp_path / "m.jsonl", tmp_path / "trace.json"
    (tmp_path / "trace.json.part-server-1").write_text("left by an earlier run")  # cleared, not merged
    observed = run(
        [
            *LAUNCH,
            *common,
            "--save",
            str(tmp_path / "observed.npz"),
            "--metrics",
            str(metrics),
            "--log-every",
            "5",
            "--trace",
            str(trace),
            "--trace-steps",
            "2:4",
        ]
    )
    assert observed.returncode == 0, observed.stdout + observed.stderr
    assert same_bits(load_npz(tmp_path / "plain.npz"), load_npz(tmp_path / "observed.npz"))

    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [(r["type"], r.get("step")) for r in records] == [
        ("config", None),
        ("step", 5),
        ("step", 10),
        ("step", 12),
        ("epoch", 12),
    ]
    for r in records[1:4]:
        assert r["epoch"] == 1 and r["steps"] == (2 if r["step"] == 12 else 5) and 0 < r["lr"] <= 2e-3
        assert r["loss"] > 0 and 0 <= r["train_acc"] <= 1
        assert r["compute_ms"] > 0 and r["comm_ms"] > 0 and r["update_ms"] > 0
        assert r["step_ms"] == pytest.approx(r["compute_ms"] + r["comm_ms"] + r["update_ms"], abs=2e-3)
        assert r["exposed_comm_ms"] is not None  # the workers share the server's clock

    events = json.loads(trace.read_text())["traceEvents"]
    assert sorted(p.name for p in tmp_path.iterdir() if ".part-" in p.name) == []
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names[0] == "server"
    steps = [e for e in events if e["name"] == "step"]
    assert [s["args"]["step"] for s in steps] == [2, 3, 4] and {s["pid"] for s in steps} == {0}
    phases = ["send parameters", "receive gradients", "sum", "Adam"]
    for step in steps:
        inner = sorted((e for e in events if e["name"] in phases and inside(e, step)), key=lambda e: e["ts"])
        assert [e["name"] for e in inner] == phases
    assert len([e for e in events if e["name"] == "evaluate"]) == 1
    assert "left by an earlier run" not in trace.read_text()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--log-every", "5"], "--log-every must be a positive integer and needs --metrics"),
        (["--log-every", "0", "--metrics", "m.jsonl"], "--log-every: must be a positive integer"),
        (["--trace-steps", "1:5"], "--trace-steps needs --trace"),
        (["--trace", "t.json", "--trace-steps", "9:2"], "--trace-steps must be FIRST:LAST with 1 <= FIRST"),
        (
            ["--trace", "/nonexistent/t.json"],
            "--trace /nonexistent/t.json: folder /nonexistent does not exist",
        ),
    ],
)
@pytest.mark.parametrize("command", [LAUNCH, [sys.executable, "-m", "numpy_cnn.train"]])
def test_bad_observation_flags_exit_2(tmp_path, args, message, command):
    result = run([*command, "fc-net", *args], timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
