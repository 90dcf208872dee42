"""A registered worker as the server sees it, and what ends a job when one is lost."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Member:
    """A registered worker: its connection, whether its replica is built, when it last spoke."""

    rank: int
    peer: bytes
    pid: int  # as it says: for the launcher, which kills a stuck worker by pid
    heard: float
    boot: str = ""  # the machine's boot id, as it says: the same as the server's means one clock
    ready: bool = False
    asked: int = 0  # PARAMS messages sent to it
    held: list[int] = field(default_factory=list)  # the version of each bucket it holds (-1: none)


# a worker stopped at a breakpoint sends no heartbeats either: say so where silence drops one
DEBUGGER_HINT = (
    ". (A worker paused in a debugger looks the same: to debug with pdb, run the job with "
    "--single-process, where the server and the workers share one process.)"
)


class WorkerLost(RuntimeError):
    """A worker died or went silent, and the job was told to stop then (--on-worker-failure abort)."""
