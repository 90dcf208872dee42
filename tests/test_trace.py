"""The trace writer (Chrome trace-event JSON), and serial training's --trace."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from numpy_cnn.config import Config
from numpy_cnn.distributed.tracing import traced_events
from numpy_cnn.trace import OFF, Trace, merge_parts, parse_steps, part_path
from numpy_cnn.train import train


def load(path) -> list[dict]:
    document = json.loads(path.read_text())
    assert document["displayTimeUnit"] == "ms"
    return document["traceEvents"]


def spans(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e["ph"] == "X" and e["name"] == name]


def inside(inner: dict, outer: dict) -> bool:
    return outer["ts"] <= inner["ts"] and inner["ts"] + inner["dur"] <= outer["ts"] + outer["dur"] + 1e-3


def test_spans_and_phases_nest_on_each_threads_track(tmp_path):
    trace = Trace(str(tmp_path / "t.json"), "test", pid=3)
    trace.at_step(1)
    with trace.span("step", step=1):
        trace.phase("first")
        time.sleep(0.002)
        with trace.span("inner"):  # a span opens a level: the phase outside it stays open
            trace.phase("a")
            trace.phase("b")
        trace.phase("second")

        def other():
            with trace.span("on a thread"):
                pass

        worker = threading.Thread(target=other)
        worker.start()
        worker.join()
    trace.instant("lost", rank=2)
    trace.save()
    events = load(tmp_path / "t.json")
    step, first, second, inner = (spans(events, n)[0] for n in ("step", "first", "second", "inner"))
    a, b, on_thread = spans(events, "a")[0], spans(events, "b")[0], spans(events, "on a thread")[0]
    assert step["args"] == {"step": 1} and step["pid"] == 3
    assert all(inside(s, step) for s in (first, second, inner, a, b))
    assert inside(inner, first) and inside(a, inner) and inside(b, inner)
    assert a["ts"] + a["dur"] <= b["ts"] + 1e-3 and first["dur"] >= 2000  # microseconds
    assert on_thread["tid"] != step["tid"]
    names = {(e["tid"], e["args"]["name"]) for e in events if e["name"] == "thread_name"}
    assert names == {(step["tid"], "main"), (on_thread["tid"], "thread 1")}
    assert {"name": "process_name", "ph": "M", "pid": 3, "tid": 0, "args": {"name": "test"}} in events
    (lost,) = [e for e in events if e["ph"] == "i"]
    assert lost["name"] == "lost" and lost["args"] == {"rank": 2}


def test_steps_outside_the_range_leave_no_spans_but_always_spans_and_instants_stay(tmp_path):
    trace = Trace(str(tmp_path / "t.json"), steps=(2, 3))
    for step in range(1, 6):
        trace.at_step(step)
        with trace.span("step", step=step):
            trace.phase("work")
        trace.instant("heartbeats", always=False)
    with trace.span("evaluate", always=True):
        pass
    trace.instant("worker lost")
    trace.save()
    events = load(tmp_path / "t.json")
    assert [e["args"]["step"] for e in spans(events, "step")] == [2, 3]
    assert len(spans(events, "work")) == 2 and len(spans(events, "evaluate")) == 1
    assert [e["name"] for e in events if e["ph"] == "i"] == ["heartbeats", "heartbeats", "worker lost"]


def test_a_trace_without_a_path_records_nothing(tmp_path):
    assert not OFF.at_step(1)
    with OFF.span("step", always=True):
        OFF.phase("x")
    OFF.instant("y")
    OFF.save()
    assert OFF.events == []


@pytest.mark.parametrize(
    "text,expected",
    [("1:50", (1, 50)), ("100:", (100, None)), (":7", (1, 7)), (":", (1, None)), ("3:3", (3, 3))],
)
def test_parse_steps(text, expected):
    assert parse_steps(text) == expected


@pytest.mark.parametrize("text", ["5", "a:b", "0:4", "5:4", ""])
def test_parse_steps_refuses(text):
    with pytest.raises(ValueError, match="FIRST:LAST"):
        parse_steps(text)


def test_parts_of_several_processes_merge_on_one_clock(tmp_path):
    path = str(tmp_path / "job.json")
    server, worker = (
        Trace(part_path(path, "server-1"), "server"),
        Trace(part_path(path, "w-2"), "worker 0", 1),
    )
    for trace in (server, worker):
        trace.at_step(1)
        with trace.span("step"):
            pass
        trace.save()
    Trace(part_path(path, "server-3"), "server").save()  # a restarted server names its track again
    assert merge_parts(path) == 3
    events = load(tmp_path / "job.json")
    assert sorted(e["pid"] for e in spans(events, "step")) == [0, 1]
    assert sum(e["name"] == "process_name" and e["pid"] == 0 for e in events) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.json"]  # the parts are gone
    # a worker on another machine: its offset puts its events on the server's clock
    shifted = Trace(str(tmp_path / "w.json"), offset=10.0)
    shifted.at_step(1)
    with shifted.span("step"):
        pass
    assert shifted.events[-1]["ts"] > spans(events, "step")[0]["ts"] + 9.9e6


def test_the_servers_events_become_instants(tmp_path):
    trace, seen = Trace(str(tmp_path / "t.json"), steps=(1, 1)), []
    events = traced_events(trace, seen.append)
    events({"event": "worker_lost", "rank": 1, "reason": "gone"})
    events({"event": "alive"})  # heartbeats: only within the traced steps
    trace.at_step(1)
    events({"event": "alive"})
    events({"event": "step", "step": 1})
    assert len(seen) == 4
    instants = [(e["name"], e.get("args")) for e in trace.events if e["ph"] == "i"]
    assert instants == [("worker lost", {"rank": 1, "reason": "gone"}), ("heartbeats", None)]
    untraced = seen.append
    assert traced_events(OFF, untraced) is untraced


def test_serial_training_traces_each_micro_shard_inside_its_step(mnist_dir, tmp_path):
    path = tmp_path / "trace.json"
    config = Config(
        "conv-net",
        max_steps=6,
        shards=4,
        threads=2,
        data_dir=str(mnist_dir),
        trace=str(path),
        trace_steps="2:4",
    )
    train(config, progress=False, log=lambda s: None)
    events = load(path)
    steps = spans(events, "step")
    assert [s["args"]["step"] for s in steps] == [2, 3, 4]
    for step in steps:
        shards = [s for s in spans(events, "micro-shard") if inside(s, step)]
        assert sorted(s["args"]["shard"] for s in shards) == [0, 1, 2, 3]
        for shard in shards:  # forward then backward, on the shard's thread, inside the shard
            fwd, bwd = (
                [e for e in spans(events, n) if e["tid"] == shard["tid"] and inside(e, shard)]
                for n in ("forward", "backward")
            )
            assert len(fwd) == len(bwd) == 1 and fwd[0]["ts"] <= bwd[0]["ts"]
        for name in ("batch", "micro-shards", "tree sum", "Adam"):
            assert len([e for e in spans(events, name) if inside(e, step)]) == 1, name
    assert len(spans(events, "micro-shard")) == 12  # nothing outside the traced steps
    assert {s["tid"] for s in spans(events, "micro-shard")} == {1, 2}  # the two threads' tracks
    assert len(spans(events, "evaluate")) == 1


def test_tracing_and_step_lines_do_not_move_bits(mnist_dir, tmp_path):
    def weights(name, **extra):
        path = tmp_path / f"{name}.npz"
        config = Config("conv-net", max_steps=8, shards=4, seed=2, data_dir=str(mnist_dir), save=str(path))
        for key, value in extra.items():
            setattr(config, key, value)
        train(config, progress=False, log=lambda s: None)
        return path.read_bytes()

    plain = weights("plain")
    observed = weights(
        "observed",
        trace=str(tmp_path / "t.json"),
        trace_steps="1:",
        metrics=str(tmp_path / "m.jsonl"),
        log_every=3,
    )
    assert plain == observed
    assert np.load(tmp_path / "plain.npz").files  # a real weights file
