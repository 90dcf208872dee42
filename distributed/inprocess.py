"""A parameter server and its workers in one process, over direct calls: `launch --single-process`
and the tests use it to step through a job with pdb and print."""

from __future__ import annotations

from collections.abc import Callable

from numpy_cnn.data import MNIST, load

from .config import JobConfig
from .server import ParameterServer
from .transport import LocalTransport
from .worker import Worker


def in_process_server(
    config: JobConfig,
    data: MNIST | None = None,
    events: Callable[[dict], None] | None = None,
    log: Callable[[str], None] = print,
    workers: list | None = None,
) -> ParameterServer:
    """A ParameterServer whose workers (ranks 0 .. config.workers-1 unless `workers` are given)
    run in this process; call `.run()` to train. Pin one BLAS thread, as worker processes do, to
    get the multiprocess run's bits."""
    data = load(config.dataset, config.data_dir) if data is None else data
    if workers is None:
        workers = [Worker(rank, data) for rank in range(config.workers)]
    return ParameterServer(config, LocalTransport(workers), data, events=events, log=log)
