"""`launch [flags] MODEL`: train with a parameter server and N workers, or all in one process."""

from __future__ import annotations

import argparse
import logging
import os
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
from numpy_cnn.distributed import keys, token
from numpy_cnn.distributed.config import BUCKET_MODES, FAILURE_POLICIES, SPIN_ENV, JobConfig, spin_seconds
from numpy_cnn.distributed.protocol import ProtocolError

from . import cluster
from .progress import Progress
from .supervisor import Job
from .tracefile import clear_parts, collect_trace

DEFAULT_BIND = "tcp://127.0.0.1:*"  # one machine: loopback, any free port


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="launch",
        description="Data-parallel training of a model (one of the original NumPy-CNN write-up's, or "
        "your own) on MNIST: a parameter server holds the weights and runs Adam, N worker processes "
        "compute gradients on their micro-shards of each batch, and they talk over ZeroMQ on "
        "127.0.0.1. Any number of workers gives the same weights, bit for bit.",
        epilog="examples: launch --workers 4 conv-net; launch --workers 4 my_model.py:make_net (every "
        "worker imports the file, or a package.module:FUNCTION, itself); launch keygen DIR writes "
        "CURVE keys for a job that spans machines, and launch worker --connect ENDPOINT --rank R "
        "--keys DIR starts a worker on another machine (see the README)",
    )
    add_arguments(
        parser,
        metrics_keys=", and per step: step_ms, compute_ms, comm_ms, update_ms, bytes_per_step",
        shards=4,
        step_keys=", and per step: step_ms, compute_ms, comm_ms, exposed_comm_ms, update_ms",
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
        "--buckets",
        choices=BUCKET_MODES,
        default="auto",
        help="how workers send gradients: stream, bucket by bucket during the backward pass, so that "
        "the server updates each while the workers compute the layers below; one, all at once at "
        "its end; auto: stream where the server and every worker on its machine have a core of "
        "their own, else one (the same weights either way; default: %(default)s)",
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
        help="dead workers, and with --checkpoint-dir a dead or stuck server (from its newest "
        "checkpoint), restarted in all; after that the other workers carry on, and a server's "
        "failure stops the job (default: %(default)s)",
    )
    group = parser.add_argument_group("network")
    group.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        help="the server's ZeroMQ endpoint; * picks a free port (default: %(default)s)",
    )
    group.add_argument(
        "--keys",
        metavar="DIR",
        default=None,
        help="CURVE keys from `launch keygen DIR`, for workers on other machines "
        "(default: a fresh set for this job, deleted at the end)",
    )
    group = parser.add_argument_group(
        "several machines",
        "one launch per node, each with the same flags; node 0 runs the server. Without these flags "
        "the node's place comes from torchrun's PET_ variables, Kubeflow's, Slurm's, Open MPI's or a "
        "Kubernetes Indexed Job's, in that order; a flag beats a variable.",
    )
    cluster.add_arguments(group)
    group.add_argument(
        "--token-file",
        metavar="FILE",
        default=None,
        help="the job token (from `launch token --file FILE`), private to its owner; default: "
        "$NUMPY_CNN_TOKEN. Every node derives the job's CURVE keys from it",
    )
    group = parser.add_argument_group("this machine")
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
    if argv[:1] == ["token"]:
        return make_token(argv[1:])
    if argv[:1] in (["worker"], ["server"]):
        from . import roles  # the processes a job is made of

        return roles.worker_main(argv[1:]) if argv[0] == "worker" else roles.server_main(argv[1:])
    parser = build_parser()
    config, args = parse_config(parser, argv, JobConfig, outputs=False)
    if args.local_workers is not None and args.local_workers > config.workers:
        parser.error(f"--local-workers {args.local_workers} is more than --workers {config.workers}")
    local = config.workers if args.local_workers is None else args.local_workers
    try:
        spin_seconds(os.environ.get(SPIN_ENV))  # read by the workers: say so before they start
    except ValueError as e:
        parser.error(str(e))
    try:
        node = cluster.detect(os.environ, args)
        ranks = cluster.node_ranks(node, config.workers) if node.nnodes > 1 else range(local)
        job_token = None
        if args.token_file is not None or (node.nnodes > 1 and args.keys is None):
            job_token = token.read_token(os.environ, args.token_file)
    except cluster.ClusterError as e:
        parser.error(str(e))
    except token.TokenError as e:
        parser.error(
            f"{e}. This is node {node.node_rank} of {node.nnodes} (from {node.source}), and a job across "
            "machines never runs without authentication: make a token with `launch token`, give every "
            "node the same one in NUMPY_CNN_TOKEN or --token-file FILE, or use --keys DIR (or --nnodes 1 "
            "to run on this machine alone)"
        )
    if node.node_rank == 0:  # only the server's node writes --save, --metrics and checkpoints
        try:
            config.check_paths()
        except ValueError as e:
            parser.error(str(e))
    if node.nnodes > 1 and (args.single_process or args.local_workers is not None):
        parser.error("--single-process and --local-workers are for one machine: leave them out with --nnodes")
    if args.keys is not None:  # each side reads only its own files (a worker's machine has no server secret)
        try:
            if node.node_rank == 0:
                keys.read(args.keys, keys.SERVER)
            if len(ranks):
                keys.read(args.keys, keys.WORKER)
        except ValueError as e:
            parser.error(f"--keys: {e}")
    how = " in this process" if args.single_process else " processes"
    print(describe(config, f" over {config.workers} worker{how}"), flush=True)
    if args.single_process:
        return run_single_process(config)
    ipc = args.local_transport == "ipc"
    if node.nnodes == 1:
        return Job(
            config, bind=args.bind, keys_dir=args.keys, local_workers=local, ipc=ipc, token=job_token
        ).run()
    try:
        address = cluster.resolve(node)
    except cluster.ClusterError as e:
        parser.error(str(e))
    here = ", with the server" if node.node_rank == 0 else ""
    print(
        f"launch: node {node.node_rank} of {node.nnodes}{here} (from {node.source}); the server at "
        f"{address}:{node.master_port}; workers {ranks.start}..{ranks.stop - 1} here",
        flush=True,
    )
    if node.node_rank == 0:  # every interface, at the agreed port, unless --bind says otherwise
        bind = args.bind if args.bind != DEFAULT_BIND else f"tcp://*:{node.master_port}"
        if not bind.endswith(f":{node.master_port}"):
            parser.error(
                f"--bind {bind} is not at the master port {node.master_port} the other nodes connect to"
            )
        job = Job(config, bind=bind, keys_dir=args.keys, ranks=ranks, ipc=ipc, token=job_token)
    else:
        connect = f"tcp://{address}:{node.master_port}"
        job = Job(config, keys_dir=args.keys, ranks=ranks, connect=connect, token=job_token)
    return job.run()


def make_token(argv: list[str]) -> int:
    parser = Parser(
        prog="launch token",
        description="Print a fresh job token (or write it to --file, mode 0600). Every node of a job "
        "reads the same token from NUMPY_CNN_TOKEN or --token-file and derives the job's CURVE keys "
        "from it; whoever holds it can join the job, or pose as its server.",
    )
    parser.add_argument(
        "--file", metavar="FILE", default=None, help="write the token here (never overwritten)"
    )
    args = parser.parse_args(argv)
    fresh = token.new_token()
    if args.file is None:
        print(fresh)
        return 0
    try:
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        print(f"launch token: error: {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    with os.fdopen(fd, "w") as f:
        f.write(fresh + "\n")
    print(f"wrote a job token to {args.file}")
    return 0


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
    clear_parts(config)
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
        collect_trace(config, say=lambda line: progress.write(f"launch: {line}"))
        progress.close()
    print(f"launch: {summary(config, history, time.monotonic() - started)}", flush=True)
    return 0
