"""`launch [flags] MODEL`: train with a parameter server and N workers, or all in one process."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from distributed.config import JobConfig
from distributed.protocol import ProtocolError
from numpy_cnn.train import add_arguments, parse_config, positive_float, positive_int

from .progress import Progress
from .supervisor import Job


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch",
        description="Data-parallel training of one of the seed's models on MNIST: a parameter server "
        "holds the weights and runs Adam, N worker processes compute gradients on their micro-shards "
        "of each batch, and they talk over ZeroMQ on 127.0.0.1. Any number of workers gives the "
        "same weights, bit for bit.",
        epilog="example: launch --workers 4 conv-net",
    )
    add_arguments(
        parser,
        metrics_keys=", and per step: step_ms, compute_ms, comm_ms, update_ms, bytes_per_step",
        shards=4,
    )
    group = parser.add_argument_group("data parallelism")
    group.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        help="worker processes; must divide --shards (default: %(default)s)",
    )
    group.add_argument(
        "--single-process",
        action="store_true",
        help="run the server and the workers in this process, one after the other (for pdb and print); "
        "same weights as the multiprocess run",
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        default=60.0,
        help="seconds the server waits for a step's gradients and a worker for the server "
        "(default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    config, args = parse_config(parser, argv, JobConfig)
    try:
        config.check()
    except ValueError as e:
        parser.error(str(e))
    print("config " + json.dumps(config.to_dict()), flush=True)
    if args.single_process:
        return run_single_process(config)
    return Job(config).run()


def run_single_process(config: JobConfig) -> int:
    """The server and every worker in this process, over direct calls instead of sockets."""
    from threadpoolctl import threadpool_limits

    from distributed.server import ParameterServer
    from distributed.transport import LocalTransport
    from distributed.worker import Worker
    from numpy_cnn.data import load

    progress = Progress()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    # one BLAS thread, as each worker process has: the same bits as the multiprocess run
    threadpool_limits(1)
    try:
        data = load(config.dataset, config.data_dir)
        transport = LocalTransport([Worker(rank, data) for rank in range(config.workers)])
        server = ParameterServer(config, transport, data, events=progress.event, echo=progress.write)
        progress.start(server.total_steps)
        server.run()
    except KeyboardInterrupt:
        print("launch: interrupted", file=sys.stderr)
        return 130
    except (
        TimeoutError,
        ConnectionError,
        ProtocolError,
        OSError,
        ValueError,
        RuntimeError,
        FloatingPointError,
    ) as e:
        print(f"launch: error: {e}", file=sys.stderr)
        return 1
    finally:
        progress.close()
    return 0
