"""JobConfig: serial training's Config plus how the work is split, checked before anything starts."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from numpy_cnn.buckets import BUCKET_BYTES
from numpy_cnn.config import Config

FAILURE_POLICIES = ("reassign", "abort")
BUCKET_MODES = ("auto", "stream", "one")  # --buckets
# How long a worker's compute thread polls for its next PARAMS before it sleeps, where every worker
# of the job can have a core of its machine (Talk._spin): a sleeping core of a virtual machine
# wakes slowly. $NUMPY_CNN_SPIN_US sets it, in microseconds (0: never).
SPIN_ENV = "NUMPY_CNN_SPIN_US"
SPIN_S = 0.001
# how long the server polls, from a step's first finished job, for the rest of its gradients
POLL_S = 0.005


@dataclass
class JobConfig(Config):
    """A data-parallel run: the same seed and flags give the same weights whatever `workers` is."""

    workers: int = 2
    shards: int = 4  # micro-shards per global batch; fixes the reduction tree (serial's default is 2)
    timeout: float = 5.0  # seconds of silence after which a worker, or the server, counts as dead
    join_timeout: float = 120.0  # seconds to wait for workers to connect and build their replica
    on_worker_failure: str = "reassign"  # or "abort"
    max_restarts: int = 3  # how often `launch` restarts dead workers, in all
    buckets: str = "auto"  # stream: bucket by bucket during the backward pass; one: all at once

    def check(self) -> JobConfig:
        """Raise ValueError naming the first flag that makes this run impossible."""
        super().check()
        if self.workers < 1 or self.shards < 1:
            raise ValueError(f"--workers and --shards must be positive, got {self.workers}, {self.shards}")
        if self.shards % self.workers:
            raise ValueError(
                f"--shards {self.shards} is not divisible by --workers {self.workers}: "
                "every worker computes the same number of micro-shards"
            )
        if self.batch_size < self.shards:
            raise ValueError(f"--batch-size {self.batch_size} is smaller than --shards {self.shards}")
        if not (self.timeout > 0 and self.join_timeout > 0):
            raise ValueError(f"timeouts must be positive, got {self.timeout}, {self.join_timeout}")
        if self.join_timeout < self.timeout:
            raise ValueError(
                f"--join-timeout {self.join_timeout:g} is shorter than --timeout {self.timeout:g}: a "
                "restarted worker could give up before the server has dropped the one it replaces"
            )
        if self.on_worker_failure not in FAILURE_POLICIES:
            raise ValueError(
                f"--on-worker-failure must be one of {', '.join(FAILURE_POLICIES)}, "
                f"got {self.on_worker_failure!r}"
            )
        if self.max_restarts < 0:
            raise ValueError(f"--max-restarts must be 0 or more, got {self.max_restarts}")
        if self.buckets not in BUCKET_MODES:
            raise ValueError(f"--buckets must be one of {', '.join(BUCKET_MODES)}, got {self.buckets!r}")
        return self

    @property
    def bucket_cap(self) -> float:
        """The bucket plan's cap in bytes (numpy_cnn.buckets.plan): `one` puts the whole net in one
        bucket. The launcher settles `auto` before the job starts (local_buckets); where nobody
        has, the job streams."""
        return math.inf if self.buckets == "one" else BUCKET_BYTES

    def to_dict(self) -> dict[str, Any]:
        """The job's settings as sent to the server and the workers (`threads` is serial training's)."""
        return {k: v for k, v in asdict(self).items() if k != "threads"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        return cls(**data).check()


def local_buckets(mode: str, processes: int, cores: int | None = None) -> tuple[str, str]:
    """What `--buckets auto` means for a job with `processes` of its processes (the server and
    its workers) on the server's machine, and why when it does not stream: stream while each has
    a core of its own there, for the server's work on a bucket then runs while the workers
    compute; else one message per step, for on cores the workers fill, that work would only take
    their time (measured: README, Speed)."""
    if mode != "auto":
        return mode, ""
    cores = machine_cores() if cores is None else cores
    if processes <= cores:
        return "stream", ""
    return "one", (
        f"{processes} processes on {cores} cores: each worker sends its gradients in one message "
        "per step (--buckets stream sends them bucket by bucket)"
    )


def machine_cores() -> int:
    """The cores this process may run on (its affinity, on Linux), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def spin_seconds(value: str | None) -> float | None:
    """$NUMPY_CNN_SPIN_US in seconds; None where it is unset or empty (the default applies)."""
    if value is None or not value.strip():
        return None
    digits = value.strip()  # plain digits: int() would also take "1_000", "+5" and other scripts'
    us = int(digits) if digits.isascii() and digits.isdigit() else -1
    if not 0 <= us <= 1_000_000:
        raise ValueError(f"{SPIN_ENV} must be whole microseconds from 0 to 1000000, got {value!r}")
    return us / 1e6


def spin_for(workers: int, cores: int | None = None) -> float:
    """Seconds a worker polls for its next PARAMS when `workers` share this machine's cores:
    SPIN_S while each can have a core (a woken server takes a core from a polling worker), else
    none, for polling would take a core from a worker that computes."""
    return SPIN_S if workers <= (machine_cores() if cores is None else cores) else 0.0


def server_poll(parallel: bool) -> float:
    """Seconds the server polls for the rest of a step's gradients, from the step's first answer,
    where its machine's workers have a core each and fewer of them still compute than it has
    cores (ParameterServer._poll): a polling server then takes no core from a worker that
    computes. None for in-process workers, or where $NUMPY_CNN_SPIN_US is 0 (no process polls).

    Asleep, the server is woken on the core of the worker that answers last (a Unix socket wakes
    its reader where the writer runs, the other core being busy with a polling worker), and waits
    there behind that worker's next batch. Polling, it is already running, on the core of a
    worker that is done, and sums and updates there while the last one makes its next batch."""
    return POLL_S if parallel and spin_seconds(os.environ.get(SPIN_ENV)) != 0 else 0.0


def local_spin(workers_here: int, cores: int | None = None) -> dict[str, str]:
    """$NUMPY_CNN_SPIN_US for the `workers_here` workers a launcher starts on its machine, unless
    it is set already: a worker knows only the job's count of workers (Talk._spin), a launcher
    how many of them share its machine's cores."""
    if os.environ.get(SPIN_ENV, "").strip():
        return {}
    return {SPIN_ENV: str(round(spin_for(workers_here, cores) * 1e6))}
