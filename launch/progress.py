"""The job's one progress bar, fed by the server's events, with log lines printed above it."""

from __future__ import annotations

import sys
import threading

from tqdm.auto import tqdm  # a widget in a notebook, the text bar elsewhere


class Progress:
    """A tqdm bar over the job's optimizer steps (on a terminal only) and a thread-safe `write`."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar: tqdm | None = None
        self.lock = threading.Lock()

    def start(self, total: int, initial: int = 0) -> None:
        self.bar = tqdm(
            total=total, initial=initial, unit="step", disable=not self.enabled, file=sys.stderr, leave=False
        )

    def restart(self, step: int) -> None:
        """A server resumed from a checkpoint: the bar goes back to its step, once, and its rate
        counts from there (not a step event's small backward jump, which would skew the rate)."""
        if self.bar is None:
            return
        with self.lock:
            total = self.bar.total
            self.bar.close()
            self.start(total, step)

    def event(self, event: dict) -> None:
        """React to one server event: `step` moves the bar, `epoch` shows the test accuracy."""
        if self.bar is None:
            return
        with self.lock:
            if event.get("event") == "step" and isinstance(event.get("step"), int):
                self.bar.update(event["step"] - self.bar.n)
            elif event.get("event") == "epoch" and isinstance(event.get("record"), dict):
                record = event["record"]
                self.bar.set_postfix(epoch=record.get("epoch"), test=record.get("test_acc"))

    def write(self, line: str) -> None:
        with self.lock:
            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
