"""launch --log-every and --trace: step lines with the split of a step, one trace merged from the
processes' parts, and the same weights as without them."""

from __future__ import annotations

import json
import sys

import pytest
from test_launch import LAUNCH, load_npz, run, same_bits


def inside(inner: dict, outer: dict) -> bool:
    return outer["ts"] <= inner["ts"] and inner["ts"] + inner["dur"] <= outer["ts"] + outer["dur"] + 1e-3


@pytest.mark.parametrize(
    "mode", [["--workers", "2", "--buckets", "stream"], ["--workers", "2", "--single-process"]]
)
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
        # comm is what the step's span leaves after compute and update, at least 0: streaming, the
        # update overlaps the computing, and a server polling for the last bucket can leave none
        assert r["compute_ms"] > 0 and r["comm_ms"] >= 0 and r["update_ms"] > 0
        assert r["step_ms"] == pytest.approx(r["compute_ms"] + r["comm_ms"] + r["update_ms"], abs=2e-3)
        assert r["exposed_comm_ms"] is not None  # the workers share the server's clock
    epoch = records[4]
    if "--single-process" in mode:  # one at a time: no bucket timeline
        assert "bucket_ready_ms" not in epoch and "bucket_taken_ms" not in epoch
    else:  # per bucket, the last layers' first: ready, at the server, sent, taken by the workers
        times = [epoch[f"bucket_{k}_ms"] for k in ("ready", "in", "sent", "taken")]
        assert all(len(t) == 3 for t in times) and all(v > 0 for t in times for v in t)
        # medians over the same steps keep each step's order (taken: over all but the first)
        assert all(ready <= came_in <= sent for ready, came_in, sent in zip(*times[:3]))

    events = json.loads(trace.read_text())["traceEvents"]
    assert sorted(p.name for p in tmp_path.iterdir() if ".part-" in p.name) == []
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names[0] == "server"
    steps = [e for e in events if e["name"] == "step" and e["pid"] == 0]  # the server's
    assert [s["args"]["step"] for s in steps] == [2, 3, 4]

    def within(span: dict, names: list[str]) -> list[dict]:
        """The events called `names` on `span`'s track group, inside it in time, in order."""
        found = (e for e in events if e["name"] in names and e["pid"] == span["pid"] and inside(e, span))
        return sorted(found, key=lambda e: e["ts"])

    phases = ["send parameters", "receive gradients"]
    for step in steps:
        assert [e["name"] for e in within(step, phases)] == phases
        receive = within(step, ["receive gradients"])[0]
        buckets = within(receive, ["bucket"])  # each summed, run through Adam and sent on its own
        assert [b["args"]["bucket"] for b in buckets] == [0, 1, 2]  # the conv-net's, in backward order
        for b in buckets:
            assert [e["name"] for e in within(b, ["sum", "Adam", "send update"])] == [
                "sum",
                "Adam",
                "send update",
            ]
    # one track per worker: each micro-shard's forward and backward in turn, the buckets sent during
    # the last backward
    for rank in (0, 1):
        mine = [e for e in events if e["pid"] == 1 + rank]
        assert names[1 + rank] == f"worker {rank}"
        for step in (e for e in mine if e["name"] == "step"):
            spans = within(step, ["forward", "backward"])
            assert [e["name"] for e in spans] == ["forward", "backward", "forward", "backward"], spans
            assert [e["args"]["shard"] for e in spans] == [2 * rank, 2 * rank, 2 * rank + 1, 2 * rank + 1]
            sent = [e for e in mine if e["name"] == "bucket sent" and spans[3]["ts"] <= e["ts"]]
            assert [e["args"]["bucket"] for e in sent[:3]] == [0, 1, 2]
        assert [e["args"]["step"] for e in mine if e["name"] == "step"] == [2, 3, 4]
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
