"""The server's training run around its steps: the RunBook (a fresh or resumed start,
checkpoints, records, the saved weights), the epochs of steps, step lines, the trace's steps and
evaluations, each epoch's record, and telling the workers how the job ended.

`ParameterServer.run` calls `run(server)`; the steps themselves are ParameterServer.train_step.
"""

from __future__ import annotations

import logging
import time

from numpy_cnn.metrics import epoch_record, evaluate, format_record
from numpy_cnn.models import outputs
from numpy_cnn.runbook import RunBook
from numpy_cnn.steplog import StepLog

from . import protocol
from .stats import EpochStats, format_timing
from .tracing import SERVER, process_trace, traced_events

log = logging.getLogger("numpy_cnn.distributed.server")


def run(server) -> list[dict]:
    """Register the workers of `server` (a ParameterServer) and train for the configured epochs; returns one
    record per epoch."""
    config = server.config
    server.trace = process_trace(config, "server", SERVER, "server")
    server.events = traced_events(server.trace, server.events)
    classes = outputs(config.model, server.data)
    book = RunBook(config, server.net, server.optimizer, server.per_epoch, server.log, server.shape, classes)
    steps = StepLog(config.log_every, lambda record: book.write("step", record))
    server.step = server.version = book.step
    if book.resumed_from is not None:
        server.events({"event": "resumed", "step": book.step, "checkpoint": str(book.resumed_from)})
    server.register()
    last_event = 0.0
    reason = protocol.FINISHED
    try:
        for epoch, indices in book.epochs():
            stats = EpochStats()
            start = time.perf_counter()
            for index in indices:
                before = stats.totals()
                following = (epoch, index + 1) if index + 1 < indices.stop else None  # not past an epoch
                server.train_step(epoch, index, stats, following)  # traces its step (its own span)
                book.stepped(server.step, epoch, index + 1)
                lr = config.lr_at(server.step - 1, server.per_epoch)
                steps.add(server.step, epoch + 1, lr, **stats.since(before))
                if time.monotonic() - last_event > 0.2 or index == indices.stop - 1:
                    last_event = time.monotonic()
                    server.events({"event": "step", "step": server.step, "epoch": epoch + 1})
            seconds = time.perf_counter() - start
            with server.trace.span("evaluate", always=True, epoch=epoch + 1):
                test_acc = evaluate(server.net, server.data.test, server.shape, between=server.keep_alive)
            loss, train_acc = stats.loss / max(stats.samples, 1), stats.correct / max(stats.samples, 1)
            record = epoch_record(epoch + 1, server.step, loss, train_acc, test_acc, seconds, stats.samples)
            record.update(stats.timing())
            steps.flush()  # a step line never spans two epochs
            book.end_epoch(epoch, indices.stop, record)
            server.log(format_record(record, config.n_epochs) + "  " + format_timing(record))
            server.events({"event": "epoch", "record": record})
    except KeyboardInterrupt:
        reason = "interrupted"
        raise
    except BaseException as e:
        reason = f"the server stopped: {e}"
        raise
    finally:
        book.close()
        server.stop_workers(reason)  # on errors too: workers need not wait to time out
        server.trace.save()  # the launcher merges it with the other processes' parts
    server.events({"event": "trained", "step": server.step})  # a failure from here on loses no training
    book.save_weights()
    if server.rejected:
        log.warning("server: rejected %d messages in all", server.rejected)
    return book.history
