"""Serial training, the original write-up's loop: one process, the micro-shards of each batch on threads.

`python -m numpy_cnn.train MODEL` runs it; its flags are in numpy_cnn/cli.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm  # a widget in a notebook, the text bar elsewhere

from . import cli
from .config import Config
from .data import global_batch, load, steps_per_epoch
from .metrics import epoch_record, evaluate, format_record
from .models import build, input_shape, outputs
from .net import Net
from .optim import Adam
from .runbook import RunBook
from .shards import ShardedStep
from .steplog import StepLog
from .trace import Trace


def train(
    config: Config, progress: bool | None = None, log: Callable[[str], None] = print
) -> tuple[Net, list[dict]]:
    """Train `config.model` on `config.dataset`; returns the net and one record per epoch."""
    data = load(config.dataset, config.data_dir)
    shape = input_shape(config.model, data)
    net = build(config.model, seed=config.seed, dtype=config.dtype, data=data)
    optimizer = Adam(net.parameters, lr=config.lr)
    n, per_epoch = len(data.train), steps_per_epoch(len(data.train), config.batch_size)
    book = RunBook(config, net, optimizer, per_epoch, log, shape, outputs(config.model, data))
    steps = StepLog(config.log_every, lambda record: book.write("step", record))
    trace = Trace(config.trace, "serial training", steps=config.trace_range)
    step_fn = ShardedStep(config, net, trace, data)
    # one BLAS thread per micro-shard while training: deterministic, and the shards use the cores
    blas_threads = 1 if config.n_shards > 1 else None
    progress = sys.stderr.isatty() if progress is None else progress
    try:
        for epoch, indices in book.epochs():
            total_loss, correct, seen = 0.0, 0, 0
            bar = tqdm(
                total=len(indices),
                desc=f"epoch {epoch + 1}",
                unit="step",
                leave=False,
                disable=not progress,
                file=sys.stderr,
            )
            start = time.perf_counter()
            with threadpool_limits(blas_threads):
                for index in indices:
                    trace.at_step(book.step + 1)
                    with trace.span("step", step=book.step + 1):
                        trace.phase("batch")
                        batch = global_batch(
                            n, config.batch_size, config.seed, epoch, index, config.max_shift
                        )
                        x, y = batch.samples(data.train.images, data.train.labels, shape)
                        trace.phase("micro-shards")
                        loss_sum, right = step_fn(x, y, key=(config.seed, epoch, index))
                        trace.phase("Adam")
                        optimizer.lr = config.lr_at(book.step, per_epoch)
                        optimizer.update()
                    book.stepped(book.step + 1, epoch, index + 1)
                    steps.add(book.step, epoch + 1, optimizer.lr, loss_sum, right, len(y))
                    total_loss += loss_sum
                    correct += right
                    seen += len(y)
                    bar.update()
                    bar.set_postfix(loss=f"{loss_sum / len(y):.4f}", refresh=False)
            seconds = time.perf_counter() - start
            bar.close()
            with trace.span("evaluate", always=True, epoch=epoch + 1):
                test_acc = evaluate(net, data.test, shape)
            record = epoch_record(
                epoch + 1,
                book.step,
                total_loss / max(seen, 1),
                correct / max(seen, 1),
                test_acc,
                seconds,
                seen,
            )
            steps.flush()  # a step line never spans two epochs
            book.end_epoch(epoch, indices.stop, record)
            log(format_record(record, config.n_epochs))
    finally:
        step_fn.close()
        book.close()
        trace.save()  # also of a run that failed: the trace may show why
    book.save_weights()
    return net, book.history


def main(argv: list[str] | None = None) -> int:
    """`python -m numpy_cnn.train` (and `numpy-cnn-train`); the flags are in numpy_cnn/cli.py."""
    return cli.run(argv, train)


if __name__ == "__main__":
    sys.exit(main())
