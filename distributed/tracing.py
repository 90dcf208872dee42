"""The tracks of a data-parallel job's trace: which process draws where, and the server's events.

Every process writes its own part of --trace (numpy_cnn/trace.py) and the launcher on the
server's node folds them into the one file at the end. Track groups ("pid" in the file): the
server 0, worker `rank` 1 + rank, the launcher LAUNCHER. Processes on the server's machine share
its clock (time.monotonic); a worker elsewhere would pass its offset from the server's clock.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from numpy_cnn.trace import OFF, Trace, part_path

SERVER = 0
LAUNCHER = 1_000_000  # apart from any worker's group
INSTANTS = {"worker_lost": "worker lost", "resumed": "resumed from a checkpoint", "alive": "heartbeats"}


def worker_pid(rank: int) -> int:
    return 1 + rank


def process_trace(config, role: str, pid: int, label: str, offset: float = 0.0) -> Trace:
    """This process's part of `config.trace` (OFF without --trace); `role` names the part file."""
    if not config.trace:
        return OFF
    path = part_path(config.trace, f"{role}-{os.getpid()}")
    return Trace(path, label, pid=pid, steps=config.trace_range, offset=offset)


def traced_events(trace: Trace, events: Callable[[dict], None]) -> Callable[[dict], None]:
    """`events`, also recording the server's lost workers and resumptions (always) and its
    heartbeat rounds (within the traced steps) as instant events."""
    if not trace.enabled:
        return events

    def both(event: dict) -> None:
        kind = event.get("event")
        if kind in INSTANTS:
            args = {k: v for k, v in event.items() if k != "event"}
            trace.instant(INSTANTS[kind], always=kind != "alive", **args)
        events(event)

    return both
