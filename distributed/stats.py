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
    # the part of the step in which no worker computed: no forward or backward pass, and no next
    # batch being made (a worker's batch made ahead is known one step later: see add_step)
    exposed: float = 0.0
    exposed_known: bool = True  # False when a worker's clock is not the server's (another machine)
    bytes: int = 0  # array and header frames sent and received by the server
    extra: dict = field(default_factory=dict)
    # per step, per bucket: seconds after the step's start when the slowest worker had the
    # bucket's gradient ready, when the server had all of it, and when it sent the bucket's update
    bucket_ready: list[list[float]] = field(default_factory=list)
    bucket_in: list[list[float]] = field(default_factory=list)
    bucket_sent: list[list[float]] = field(default_factory=list)
    # per step, per bucket: seconds after the step's start when the last worker took its update
    # (known one step later, from the workers' next answers)
    bucket_taken: list[list[float]] = field(default_factory=list)
    # the last step's clock span and what covered it, for the batches made during it (add_step)
    window: tuple[float, float, list[tuple[float, float]]] | None = None

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

    def add_step(
        self,
        samples: int,
        answers: list,
        span: tuple[float, float],
        clock: tuple[float, float] | None,
        update: float,
        parallel: bool,
        buckets: tuple[list[float], ...],
        taken: list[float] | None = None,
    ) -> None:
        """One step of `samples`: the answers that ended the workers' jobs (GRADS messages of the
        last bucket), its perf_counter `span`, the same on the monotonic clock the workers share
        (None: they don't), the server's update time, whether the workers ran at the same time,
        and per bucket the monotonic times it was ready, was in, and was sent; `taken`: the step
        before's seconds from its start until each bucket's update was taken (None: unknown).

        The exposed time is the step's span that neither a job's computation covers nor a
        worker making its next batch ahead (Worker.prepare_next: GRADS.prepared). A worker makes
        it after its last bucket, during the step, and reports it with its next answers: the step
        before is counted without it at first, then those answers take the part it covered off.
        (The last step of an epoch keeps it: the next epoch's answers do not reach it.)"""
        computes = [m["compute_s"] for m in answers]
        compute = max(computes, default=0.0) if parallel else sum(computes)
        self.steps += 1
        self.samples += samples
        self.loss += sum(m["loss"] for m in answers)
        self.correct += sum(m["correct"] for m in answers)
        self.compute += compute
        self.comm += max(0.0, span[1] - span[0] - compute - update)
        self.update += update
        # a worker's compute ends with its last bucket; then it makes its next batch
        intervals = [(m["started"], m["started"] + m["compute_s"]) for m in answers]
        made = [(m["prepared"][0], sum(m["prepared"])) for m in answers if m["prepared"]]
        if clock and self.window is not None:  # the batches made during the step before
            start, end, covered = self.window
            self.exposed -= uncovered(start, end, covered) - uncovered(start, end, covered + made)
        self.window = (*clock, intervals + made) if clock else None
        self.add_exposed(*(clock or (0.0, 0.0)), intervals + made if clock else None)
        if clock and parallel:
            began = clock[0]
            self.bucket_ready.append([t - began for t in buckets[0]])
            self.bucket_in.append([t - began for t in buckets[1]])
            self.bucket_sent.append([t - began for t in buckets[2]])
            if taken is not None:
                self.bucket_taken.append(taken)

    def bucket_timing(self) -> dict:
        """Medians over the steps, per bucket (in the order they are sent), in ms after the step's
        start; nothing when unknown (in-process, or workers on other machines)."""
        if not self.bucket_ready:
            return {}

        def medians(rows: list[list[float]]) -> list[float]:
            return [round(1000 * statistics.median(col), 3) for col in zip(*rows)]

        return {
            "bucket_ready_ms": medians(self.bucket_ready),
            "bucket_in_ms": medians(self.bucket_in),
            "bucket_sent_ms": medians(self.bucket_sent),
            **({"bucket_taken_ms": medians(self.bucket_taken)} if self.bucket_taken else {}),
        }

    def totals(self) -> tuple:
        """The sums so far, for `since`."""
        return (self.samples, self.loss, self.correct, self.compute, self.comm, self.update, self.exposed)

    def since(self, before: tuple) -> dict:
        """What the steps since `totals()` returned `before` added: StepLog.add's keyword arguments."""
        now = self.totals()
        samples, loss, correct, compute, comm, update, exposed = (a - b for a, b in zip(now, before))
        return {
            "loss": loss,
            "correct": correct,
            "samples": samples,
            "split": {"compute": compute, "comm": comm, "update": update},
            # the steps' own batches made ahead come off with the next answers: never below 0
            "exposed": max(0.0, exposed) if self.exposed_known else None,
        }

    def add_exposed(self, start: float, end: float, intervals: list[tuple[float, float]] | None) -> None:
        """Add the time in [start, end] that no interval covers (None: the clocks are unknown)."""
        if intervals is None:
            self.exposed_known = False
            return
        self.exposed += uncovered(start, end, intervals)


def uncovered(start: float, end: float, intervals: list[tuple[float, float]]) -> float:
    """The time in [start, end] that no interval covers."""
    covered, reach = 0.0, start
    for lo, hi in sorted(intervals):
        lo, hi = max(lo, reach), min(hi, end)
        if hi > lo:
            covered, reach = covered + hi - lo, hi
    return (end - start) - covered


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


def taken_after(answers: list, before: tuple[int, float] | None, step: int) -> list[float] | None:
    """Per bucket, seconds after the start of the step before `step` when the last of the workers
    that answered `step` took that step's update (in an UPDATE, or in the next PARAMS); None when
    unknown (a fresh start, or a worker that joined since)."""
    if before is None or before[0] != step - 1 or not answers:
        return None
    last = [max(column) for column in zip(*(m["taken"] for m in answers))]
    return [t - before[1] for t in last] if min(map(min, (m["taken"] for m in answers))) > 0.0 else None
