"""RunBook: the bookkeeping of one training run, shared by serial and data-parallel training.

It knows where the run starts (step 0, or a checkpoint's step and place in the data order),
which batches each epoch still has to train (`--max-steps` may end the run early), when a
checkpoint is due (every `--checkpoint-every` steps and at each epoch end, never twice for one
step), keeps the per-epoch records, appending them (and --log-every's step lines) to `--metrics` (to
the old file when resuming) after a line with the run's settings, and writes the final weights, somewhere safe
even when `--save` fails. The caller does the steps themselves and tells the book about each one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from . import checkpoint, saved
from .models import input_shape


class RunBook:
    def __init__(
        self,
        config,
        net,
        optimizer,
        per_epoch: int,
        log: Callable[[str], None] = print,
        sample_shape: tuple[int, ...] | None = None,
        classes: int = 10,
    ) -> None:
        self.config, self.net, self.optimizer, self.per_epoch = config, net, optimizer, per_epoch
        # what the --save file says it holds (numpy_cnn/saved.py)
        self.sample_shape = sample_shape if sample_shape is not None else input_shape(config.model)
        self.classes = classes
        self.step = 0  # optimizer steps taken
        self.start: tuple[int, int] = (0, 0)  # (epoch, batch index) of the first batch to train
        self.resumed_from: Path | None = None
        if config.resume:
            step, epoch, index, self.resumed_from = checkpoint.resume_run(
                config.resume, config.identity(), net, optimizer
            )
            self.step, self.start = step, (epoch, index)
            log(f"resumed from {self.resumed_from} at step {step} (epoch {epoch + 1}, batch {index})")
        elif config.init_from:  # a new run from saved weights; the optimizer starts afresh
            step = saved.load_into(net, config.init_from).meta.get("step")
            log(f"initial weights from {config.init_from}" + (f" (step {step})" if step is not None else ""))
        self.saved = self.step  # the step of the newest checkpoint: never write the same one twice
        self.position = self.start  # (epoch, index) of the next batch to train
        self.history: list[dict] = []
        self.started = time.monotonic()
        mode = "a" if config.resume else "w"  # a resumed run adds to the interrupted run's records
        self.metrics = open(config.metrics, mode, encoding="utf-8") if config.metrics else None
        if self.metrics:  # every settings of the run, resolved; a resumed run adds another such line
            settings = {k: v for k, v in config.identity().items() if v is not None or k != "threads"}
            self.metrics.write(json.dumps({"type": "config", **settings, "start_step": self.step}) + "\n")
            self.metrics.flush()

    def epochs(self) -> Iterator[tuple[int, range]]:
        """Each epoch left to train, with the indices of the batches it trains."""
        first_epoch, first_index = self.start
        for epoch in range(first_epoch, self.config.n_epochs):
            if self.config.max_steps is not None and self.step >= self.config.max_steps:
                return
            first = first_index if epoch == first_epoch else 0
            todo = self.per_epoch - first
            if self.config.max_steps is not None:
                todo = min(todo, self.config.max_steps - self.step)
            yield epoch, range(first, first + todo)

    def stepped(self, step: int, epoch: int, next_index: int) -> None:
        """Optimizer step `step` is done and batch `next_index` of `epoch` comes next."""
        self.step, self.position = step, (epoch, next_index)
        every = self.config.checkpoint_every
        if self.config.checkpoint_dir and every and step % every == 0:
            self.save(epoch, next_index)

    def end_epoch(self, epoch: int, next_index: int, record: dict) -> None:
        """Checkpoint (if checkpointing), keep the epoch's record and append it to --metrics."""
        if self.config.checkpoint_dir:
            self.save(epoch, next_index)
        self.history.append(record)
        self.write("epoch", record)

    def write(self, kind: str, record: dict) -> None:
        """Append {"type": kind, **record} to --metrics, if there is one (also a StepLog's lines)."""
        if self.metrics:
            self.metrics.write(json.dumps({"type": kind, **record}) + "\n")
            self.metrics.flush()

    def save(self, epoch: int, next_index: int) -> None:
        if self.saved != self.step:
            checkpoint.save_run(
                self.config.checkpoint_dir,
                self.config.identity(),
                self.step,
                epoch,
                next_index,
                self.per_epoch,
                self.net,
                self.optimizer,
                {"sample_shape": list(self.sample_shape), "classes": self.classes},
            )
            self.saved = self.step

    def close(self) -> None:
        if self.metrics:
            self.metrics.close()

    def save_weights(self) -> str | None:
        """Write the net to --save; if that fails, put the weights somewhere safe and raise an
        OSError naming the path, the cause and where they are. Returns the path written, if any."""
        path = self.config.save
        if path is None:
            return None
        try:
            self._write(path)
            return path
        except OSError as e:
            safe = self._rescue(path)
            where = (
                f"the trained weights are in {safe}" if safe else "no copy of the weights could be written"
            )
            raise OSError(f"--save {path}: {e.strerror or e}; {where}") from e

    def _rescue(self, path: str) -> str | None:
        """The newest checkpoint if it holds this step (written now if it can be), else a file in
        the temporary folder or the home folder; None if nothing could be written."""
        if self.config.checkpoint_dir:
            try:
                self.save(*self.position)
                return f"the checkpoint {checkpoint.latest(self.config.checkpoint_dir).path}"
            except (OSError, checkpoint.CheckpointError):
                pass
        name = f"numpy_cnn-{Path(path).stem}-{os.getpid()}.npz"
        for folder in (tempfile.gettempdir(), os.path.expanduser("~")):
            try:
                self._write(os.path.join(folder, name))
                return os.path.join(folder, name)
            except OSError:
                continue
        return None

    def _write(self, path: str) -> None:
        saved.save(path, self.net, saved.describe(self.config, self.step, self.sample_shape, self.classes))
