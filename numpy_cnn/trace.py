"""Trace: spans and instant events of one process, written as Chrome trace-event JSON.

The file is {"traceEvents": [...], "displayTimeUnit": "ms"}, which Perfetto (ui.perfetto.dev)
and chrome://tracing open: complete events ("ph": "X", ts and dur in microseconds), instant
events ("ph": "i") and metadata events naming each process and thread.

Times are time.monotonic() plus `offset` seconds: processes on one machine share that clock
(offset 0); a process on another machine passes the difference between the server's clock and
its own, so every track lies on the server's time. Each process writes its own file; a
launcher that started several folds the parts into one with `merge_parts`.

`steps` bounds the size: spans are kept only while `at_step(step)` has put the trace on a step
in [first, last]; evaluation spans (`always=True`) and instant events such as a lost worker are
kept at any step. A Trace without a path records nothing and costs a flag test per call.
"""

from __future__ import annotations

import glob
import json
import os
import threading
import time
from contextlib import contextmanager

from .files import atomic_write

DEFAULT_STEPS = (1, 50)  # a few steps show the pattern; a whole run's trace would be huge
PART = ".part-"  # PATH.part-NAME: one process's file, waiting for merge_parts


def parse_steps(text: str) -> tuple[int, int | None]:
    """'FIRST:LAST' (1-based, inclusive; either side may be left out) -> (first, last or None)."""
    first, sep, last = text.partition(":")
    try:
        if not sep:
            raise ValueError
        lo = int(first) if first.strip() else 1
        hi = int(last) if last.strip() else None
    except ValueError:
        raise ValueError(
            f"must be FIRST:LAST (e.g. 1:50, or 100: for step 100 to the end), got {text!r}"
        ) from None
    if lo < 1 or (hi is not None and hi < lo):
        raise ValueError(f"must be FIRST:LAST with 1 <= FIRST <= LAST, got {text!r}")
    return lo, hi


class Trace:
    """Collects events on tracks (pid, tid) of this process; `save()` writes them to `path`.

    pid is the track group: 0 the server (or serial training), 1 + rank for worker `rank`; `name`
    is that group's label. Threads get small tids in the order they first record, named
    `thread_names[i]` (default 'main' for the first, then 'thread 1', ...).
    """

    def __init__(
        self,
        path: str | None,
        name: str = "training",
        pid: int = 0,
        steps: tuple[int, int | None] = DEFAULT_STEPS,
        offset: float = 0.0,
    ) -> None:
        self.path, self.name, self.pid, self.steps, self.offset = path, name, pid, steps, offset
        self.enabled = path is not None
        self.active = False  # inside the traced steps
        self.events: list[dict] = []
        self.tids: dict[int, int] = {}  # threading.get_ident() -> small tid
        # tid -> the open phase (or None) of each span level of that thread, outermost first
        self.open: dict[int, list[tuple[str, float, dict] | None]] = {}
        self.lock = threading.Lock()

    def at_step(self, step: int) -> bool:
        """Optimizer step `step` (1-based, as in the metrics file) begins: trace it if in range."""
        first, last = self.steps
        self.active = self.enabled and first <= step and (last is None or step <= last)
        return self.active

    def now(self) -> float:
        return time.monotonic()

    def tid(self, label: str | None = None) -> int:
        """This thread's tid, named `label` (or a default) when first seen."""
        ident = threading.get_ident()
        tid = self.tids.get(ident)
        if tid is None:
            with self.lock:
                tid = self.tids[ident] = len(self.tids)
            name = label or ("main" if tid == 0 else f"thread {tid}")
            self.events.append(self._meta("thread_name", {"name": name}, tid))
            self.events.append(self._meta("thread_sort_index", {"sort_index": tid}, tid))
        return tid

    def complete(self, name: str, start: float, end: float, tid: int | None = None, **args) -> None:
        """A span from `start` to `end` (time.monotonic() seconds of this process)."""
        event = {
            "name": name,
            "ph": "X",
            "ts": self._us(start),
            "dur": round((end - start) * 1e6, 3),
            "pid": self.pid,
            "tid": self.tid() if tid is None else tid,
        }
        if args:
            event["args"] = args
        self.events.append(event)  # list.append is atomic: threads record without a lock

    @contextmanager
    def span(self, name: str, always: bool = False, **args):
        """A span around the block, on this thread's track; phases begun inside it end with it."""
        if not (self.active or (always and self.enabled)):
            yield
            return
        tid, start = self.tid(), self.now()
        levels = self.open.setdefault(tid, [None])
        levels.append(None)
        try:
            yield
        finally:
            self._end(tid, levels.pop())
            self.complete(name, start, self.now(), tid, **args)

    def phase(self, name: str | None, **args) -> None:
        """End this thread's open phase, if any, and begin one called `name` (None: only end).

        One line between two stretches of code, without indenting them: the next phase, or the end
        of the innermost span around them, ends it.
        """
        if not self.active:
            return
        tid = self.tid()
        levels = self.open.setdefault(tid, [None])
        self._end(tid, levels[-1])
        levels[-1] = None if name is None else (name, self.now(), args)

    def _end(self, tid: int, phase: tuple[str, float, dict] | None) -> None:
        if phase is not None:
            self.complete(phase[0], phase[1], self.now(), tid, **phase[2])

    def instant(self, name: str, always: bool = True, **args) -> None:
        """A moment on this thread's track: a lost worker, a restart, a heartbeat."""
        if not (self.active or (always and self.enabled)):
            return
        event = {"name": name, "ph": "i", "s": "t", "ts": self._us(self.now()), "pid": self.pid}
        event["tid"] = self.tid()
        if args:
            event["args"] = args
        self.events.append(event)

    def save(self) -> None:
        """Write the events (with the process's name) to `path`, atomically; nothing if disabled."""
        if not self.enabled:
            return
        head = [
            self._meta("process_name", {"name": self.name}),
            self._meta("process_sort_index", {"sort_index": self.pid}),
        ]
        write_events(self.path, head + self.events)

    def _us(self, t: float) -> float:
        return round((t + self.offset) * 1e6, 3)

    def _meta(self, kind: str, args: dict, tid: int = 0) -> dict:
        return {"name": kind, "ph": "M", "pid": self.pid, "tid": tid, "args": args}


def write_events(path: str, events: list[dict]) -> None:
    document = {"traceEvents": events, "displayTimeUnit": "ms"}
    atomic_write(path, lambda f: f.write(json.dumps(document, separators=(",", ":")).encode()))


def part_path(path: str, name: str) -> str:
    """Where process `name` (e.g. 'server-1234', 'worker-2-5678') writes its part of trace `path`."""
    return f"{path}{PART}{name}"


def parts(path: str) -> list[str]:
    return sorted(glob.glob(glob.escape(path) + PART + "*"))


def remove_parts(path: str) -> None:
    """Delete parts left by an earlier run with the same --trace, so they are not merged again."""
    for part in parts(path):
        os.remove(part)


def merge_parts(path: str) -> int:
    """Fold every part of trace `path` into `path` (one valid file) and delete the parts; returns
    how many there were. A part that cannot be read is skipped, with its name in a metadata event."""
    found, events = parts(path), []
    for part in found:
        try:
            with open(part, encoding="utf-8") as f:
                events.extend(json.load(f)["traceEvents"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            events.append({"name": "unreadable_part", "ph": "M", "pid": 0, "tid": 0, "args": {part: str(e)}})
    seen, merged = set(), []
    for event in events:  # a restarted process names its track again: keep one
        key = json.dumps(event, sort_keys=True) if event.get("ph") == "M" else None
        if key is None or key not in seen:
            merged.append(event)
            seen.add(key)
    if found:
        write_events(path, merged)
        for part in found:
            os.remove(part)
    return len(found)


OFF = Trace(None)  # records nothing: the default wherever a trace may be passed
