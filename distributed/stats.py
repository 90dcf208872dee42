"""EpochStats: where an epoch's steps spent their time on the server, and how a record shows it."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class EpochStats:
    """Sums over an epoch's steps: training loss and accuracy, and where each step's time went."""

    steps: int = 0
    samples: int = 0
    loss: float = 0.0
    correct: int = 0
    compute: float = 0.0  # the workers' forward/backward (the slowest worker's, when in parallel)
    comm: float = 0.0  # the rest of the step: encoding, the wire, decoding, waiting for stragglers
    update: float = 0.0  # the server summing the tree, running Adam and sending, bucket by bucket
    exposed: float = 0.0  # the part of the step in which no worker computed
    exposed_known: bool = True  # False when a worker's clock is not the server's (another machine)
    bytes: int = 0  # array and header frames sent and received by the server
    extra: dict = field(default_factory=dict)
    # per step, per bucket: seconds after the step's start when the slowest worker had the
    # bucket's gradient ready, and when the server sent the bucket's update to the workers
    bucket_ready: list[list[float]] = field(default_factory=list)
    bucket_sent: list[list[float]] = field(default_factory=list)

    def timing(self) -> dict:
        """Per-step means, in ms (they add up to the step time) and bytes."""
        n = max(self.steps, 1)
        ms = {k: round(1000 * getattr(self, k) / n, 3) for k in ("compute", "comm", "update")}
        return {
            "step_ms": round(sum(ms.values()), 3),
            "compute_ms": ms["compute"],
            "comm_ms": ms["comm"],
            "update_ms": ms["update"],
            "exposed_comm_ms": round(1000 * self.exposed / n, 3) if self.exposed_known else None,
            "bytes_per_step": round(self.bytes / n),
            **self.bucket_timing(),
        }

    def add_buckets(self, ready: list[float], sent: list[float]) -> None:
        self.bucket_ready.append(ready)
        self.bucket_sent.append(sent)

    def bucket_timing(self) -> dict:
        """Medians over the steps, per bucket (in the order they are sent), in ms after the step's
        start; nothing when unknown (in-process, or workers on other machines)."""
        if not self.bucket_ready:
            return {}

        def medians(rows: list[list[float]]) -> list[float]:
            return [round(1000 * statistics.median(col), 3) for col in zip(*rows)]

        return {"bucket_ready_ms": medians(self.bucket_ready), "bucket_sent_ms": medians(self.bucket_sent)}

    def add_exposed(self, start: float, end: float, intervals: list[tuple[float, float]] | None) -> None:
        """Add the time in [start, end] that no interval covers (None: the clocks are unknown)."""
        if intervals is None:
            self.exposed_known = False
            return
        covered, reach = 0.0, start
        for lo, hi in sorted(intervals):
            lo, hi = max(lo, reach), min(hi, end)
            if hi > lo:
                covered, reach = covered + hi - lo, hi
        self.exposed += (end - start) - covered


def format_timing(r: dict) -> str:
    return (
        f"step {r['step_ms']:.2f} ms = compute {r['compute_ms']:.2f} + comm {r['comm_ms']:.2f} "
        f"+ update {r['update_ms']:.2f}, {r['bytes_per_step'] / 1e6:.2f} MB/step"
        + (
            f", no worker computing for {r['exposed_comm_ms']:.2f} ms"
            if r.get("exposed_comm_ms") is not None
            else ""
        )
    )


def boot_id() -> str:
    """This boot of this machine: processes that share it share one monotonic clock."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""  # unknown: never taken for the server's
