"""StepLog: the --log-every lines of --metrics, sums over the steps since the last one.

Serial and data-parallel training tell it about each optimizer step; every `every` steps (when the
run's step count is a multiple of it) it hands `write` one record:

    {"step": 200, "epoch": 1, "steps": 100, "loss": ..., "train_acc": ..., "lr": ...}

loss and train_acc are over the samples of those `steps` steps, lr is the last one's rate. `launch`
adds the split of a step, means in ms: step_ms = compute_ms + comm_ms + update_ms, and
exposed_comm_ms (the part of comm in which no worker computed or made its next batch ahead; a
worker says when it made that batch with its next answers, so the time the last step of a line
covered that way comes off the next line, never below 0; null when a worker's clock is not the
server's). The trainers flush it at the end of each epoch, before the epoch's line, so a
line never spans two epochs and the last steps of a run are never left out. A resumed run
counts from its checkpoint's step, so its first line may cover fewer steps (`steps` says how
many); the earlier run's lines after that step are superseded (numpy_cnn/records.py).
"""

from __future__ import annotations

from collections.abc import Callable

SPLIT = ("compute", "comm", "update")  # where a data-parallel step's time went, adding up to it


class StepLog:
    def __init__(self, every: int | None, write: Callable[[dict], None]) -> None:
        self.every, self.write = every, write
        self._reset()

    def _reset(self) -> None:
        self.steps = self.samples = self.correct = 0
        self.loss = 0.0
        self.seconds: dict[str, float] = {}
        self.exposed: float | None = 0.0
        self.last: tuple[int, int, float] | None = None  # (step, epoch, lr) of the newest step

    def add(
        self,
        step: int,
        epoch: int,
        lr: float,
        loss: float,
        correct: int,
        samples: int,
        split: dict[str, float] | None = None,
        exposed: float | None = None,
    ) -> None:
        """Optimizer step `step` (1-based) of `epoch` (1-based) is done: `loss` is the sum over its
        `samples`, `correct` their right answers; `split` maps SPLIT to seconds (data-parallel
        only), `exposed` the seconds no worker computed (None: unknown)."""
        if self.every is None:
            return
        self.steps += 1
        self.samples += samples
        self.correct += correct
        self.loss += loss
        if split is not None:
            for key in SPLIT:
                self.seconds[key] = self.seconds.get(key, 0.0) + split[key]
            self.exposed = None if exposed is None or self.exposed is None else self.exposed + exposed
        self.last = (step, epoch, lr)
        if step % self.every == 0:
            self.flush()

    def flush(self) -> None:
        """Write the steps not yet written, if any (the end of an epoch)."""
        if self.last is None:
            return
        step, epoch, lr = self.last
        n = max(self.samples, 1)
        record = {
            "step": step,
            "epoch": epoch,
            "steps": self.steps,
            "loss": round(self.loss / n, 6),
            "train_acc": round(self.correct / n, 6),
            "lr": lr,
        }
        if self.seconds:
            ms = {k: round(1000 * self.seconds[k] / self.steps, 3) for k in SPLIT}
            record["step_ms"] = round(sum(ms.values()), 3)
            record.update({f"{k}_ms": v for k, v in ms.items()})
            record["exposed_comm_ms"] = (
                round(1000 * self.exposed / self.steps, 3) if self.exposed is not None else None
            )
        self.write(record)
        self._reset()
