"""`launch [flags] MODEL`: train with a parameter server and N workers, or all in one process."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from numpy_cnn.cli import (
    Parser,
    add_arguments,
    describe,
    non_negative_int,
    parse_config,
    positive_float,
    positive_int,
    resume_hint,
    summary,
)
from numpy_cnn.distributed import keys
from numpy_cnn.distributed.config import FAILURE_POLICIES, JobConfig
from numpy_cnn.distributed.protocol import ProtocolError

from .progress import Progress
from .supervisor import Job


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="launch",
        description="Data-parallel training of one of the seed's models on MNIST: a parameter server "
        "holds the weights and runs Adam, N worker processes compute gradients on their micro-shards "
        "of each batch, and they talk over ZeroMQ on 127.0.0.1. Any number of workers gives the "
        "same weights, bit for bit.",
        epilog="examples: launch --workers 4 conv-net; launch keygen DIR writes CURVE keys for a "
        "job that spans machines, and launch worker --connect ENDPOINT --rank R --keys DIR starts a "
        "worker on another machine (see the README)",
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
    group = parser.add_argument_group("failures")
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=positive_float,
        default=5.0,
        help="seconds of silence after which a worker, or the server, counts as dead; heartbeats go "
        "out five times as often. Must exceed one micro-shard's forward and backward (default: %(default)s)",
    )
    group.add_argument(
        "--join-timeout",
        metavar="SECONDS",
        type=positive_float,
        default=120.0,
        help="seconds the server waits for workers to connect and load the data, at the start and "
        "when every worker is gone (default: %(default)s)",
    )
    group.add_argument(
        "--on-worker-failure",
        choices=FAILURE_POLICIES,
        default="reassign",
        help="reassign: give a dead worker's micro-shards to the others (same weights, bit for bit) "
        "and restart it; abort: stop the job with exit code 1 (default: %(default)s)",
    )
    group.add_argument(
        "--max-restarts",
        metavar="N",
        type=non_negative_int,
        default=3,
        help="dead workers restarted in all; after that the others carry on (default: %(default)s)",
    )
    group = parser.add_argument_group("network")
    group.add_argument(
        "--bind",
        default="tcp://127.0.0.1:*",
        help="the server's ZeroMQ endpoint; * picks a free port (default: %(default)s)",
    )
    group.add_argument(
        "--keys",
        metavar="DIR",
        default=None,
        help="CURVE keys from `launch keygen DIR`, for workers on other machines "
        "(default: a fresh set for this job, deleted at the end)",
    )
    group.add_argument(
        "--local-transport",
        choices=("ipc", "tcp"),
        default="ipc",
        help="how workers on this machine reach the server: ipc, a Unix socket in a private folder "
        "(no encryption needed: only this user can open it), or tcp, the CURVE-encrypted TCP port "
        "that remote workers use (default: %(default)s)",
    )
    group.add_argument(
        "--local-workers",
        metavar="N",
        type=non_negative_int,
        default=None,
        help="start ranks 0 .. N-1 here and wait for the others to connect from elsewhere with "
        "`launch worker` (default: all of --workers)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keygen"]:
        return keygen(argv[1:])
    if argv[:1] in (["worker"], ["server"]):
        from . import roles  # the processes a job is made of

        return roles.worker_main(argv[1:]) if argv[0] == "worker" else roles.server_main(argv[1:])
    parser = build_parser()
    config, args = parse_config(parser, argv, JobConfig)
    if args.local_workers is not None and args.local_workers > config.workers:
        parser.error(f"--local-workers {args.local_workers} is more than --workers {config.workers}")
    local = config.workers if args.local_workers is None else args.local_workers
    if args.keys is not None:
        try:
            keys.read(args.keys, keys.SERVER)
            if local:  # the workers started here need their side's files too
                keys.read(args.keys, keys.WORKER)
        except ValueError as e:
            parser.error(f"--keys: {e}")
    how = " in this process" if args.single_process else " processes"
    print(describe(config, f" over {config.workers} worker{how}"), flush=True)
    if args.single_process:
        return run_single_process(config)
    job = Job(
        config, bind=args.bind, keys_dir=args.keys, local_workers=local, ipc=args.local_transport == "ipc"
    )
    return job.run()


def keygen(argv: list[str]) -> int:
    parser = Parser(
        prog="launch keygen",
        description="Write a job's CURVE keys: server.key(_secret) and worker.key(_secret). The "
        "server's machine needs server.key_secret and worker.key; each worker's machine needs "
        "worker.key_secret and server.key. Anyone holding worker.key_secret can join the job.",
    )
    parser.add_argument("dir", help="folder to write the four files into (created; never overwritten)")
    args = parser.parse_args(argv)
    try:
        folder = keys.write(args.dir)
    except (FileExistsError, OSError) as e:
        print(f"launch keygen: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(keys.FILES)} to {folder}")
    return 0


def run_single_process(config: JobConfig) -> int:
    """The server and every worker in this process, over direct calls instead of sockets."""
    from threadpoolctl import threadpool_limits

    from numpy_cnn.distributed.inprocess import in_process_server

    progress = Progress()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    # one BLAS thread, as each worker process has: the same bits as the multiprocess run
    threadpool_limits(1)
    started, server = time.monotonic(), None
    try:
        server = in_process_server(config, events=progress.event, log=progress.write)
        progress.start(server.total_steps)
        history = server.run()
    except KeyboardInterrupt:
        trained = server is not None and server.step > 0
        print("launch: interrupted" + (f"; {resume_hint(config)}" if trained else ""), file=sys.stderr)
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
    print(f"launch: {summary(config, history, time.monotonic() - started)}", flush=True)
    return 0
