"""The two processes a job is made of: `launch server` (started by `launch` itself) and
`launch worker` (started by `launch`, or by hand on another machine). Each parses its flags,
runs its part from numpy_cnn.distributed, and turns the outcome into an exit status."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys

from threadpoolctl import threadpool_limits

from numpy_cnn import buckets
from numpy_cnn.cli import Parser
from numpy_cnn.data import load
from numpy_cnn.distributed import agreement, keys, protocol, token
from numpy_cnn.distributed.config import SPIN_ENV, JobConfig, spin_seconds
from numpy_cnn.distributed.lifeline import exit_when_stdin_closes
from numpy_cnn.distributed.protocol import ProtocolError
from numpy_cnn.distributed.server import ParameterServer
from numpy_cnn.distributed.transport import ZmqServerTransport
from numpy_cnn.distributed.worker import EXIT_REFUSED, EXIT_SERVER_SILENT, ServerSilent, Worker, serve
from numpy_cnn.models import build


def job_keys(folder: str | None, role: str, token_file: str | None = None) -> keys.Keys:
    """`role`'s CURVE keys: from the key files in `folder`, else derived from the job token."""
    if folder is not None:
        return keys.read(folder, role)
    return token.keys_from_token(token.read_token(os.environ, token_file), role)


def server_main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="launch server",
        description="The parameter server of one data-parallel job (launch starts it).",
    )
    parser.add_argument("--config", required=True, help="the job's JobConfig as a JSON object")
    parser.add_argument(
        "--bind", default="tcp://127.0.0.1:*", help="ZeroMQ endpoint to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--ipc-dir",
        default=None,
        help="also listen on a Unix socket in this private folder (mode 0700), without CURVE, "
        "for workers on this machine",
    )
    parser.add_argument("--events-fd", type=int, default=None, help="write JSON-lines progress events here")
    parser.add_argument(
        "--keys",
        default=None,
        help="folder with server.key_secret and worker.key (written by `launch keygen`); "
        "default: derived from the job token in $NUMPY_CNN_TOKEN",
    )
    parser.add_argument(
        "--temporary-keys",
        action="store_true",
        help="the --keys folder is a key set the launcher made for this job: with --watch-stdin, "
        "remove it when the launcher is gone",
    )
    parser.add_argument("--watch-stdin", action="store_true", help="exit when standard input closes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        config = JobConfig.from_dict(json.loads(args.config))
    except (ValueError, TypeError) as e:
        parser.error(f"--config: {e}")
    if args.temporary_keys and args.keys is None:
        parser.error("--temporary-keys needs --keys DIR")
    made: list[ZmqServerTransport] = []  # its shared files go when the launcher does (memory.py)

    def orphaned() -> None:  # what a killed launcher could not remove: nobody else will
        for transport in made:
            transport.remove_files(folder=True)
        if args.temporary_keys:
            shutil.rmtree(args.keys, ignore_errors=True)

    if args.watch_stdin:
        exit_when_stdin_closes("server", orphaned)
    events_file = os.fdopen(args.events_fd, "w", buffering=1) if args.events_fd is not None else None

    def events(event: dict) -> None:
        if events_file is not None:
            events_file.write(json.dumps(event) + "\n")

    transport = None
    try:
        data = load(config.dataset, config.data_dir)  # before listening: workers then find it cached
        net = build(config.model, dtype=config.dtype, data=data)
        largest = buckets.largest_bytes(net, config.bucket_cap)  # a frame over it drops the peer
        transport = ZmqServerTransport(
            job_keys(args.keys, keys.SERVER),
            args.bind,
            max_message_bytes=max(largest, protocol.MAX_HEADER_BYTES),
            io_threads=min(config.workers, os.cpu_count() or 1, 4),
            ipc_dir=args.ipc_dir,
        )
        made.append(transport)
        server = ParameterServer(config, transport, data, events)
        logging.getLogger("numpy_cnn.distributed.server").info(
            "server: listening on %s (pid %d)", transport.endpoint, os.getpid()
        )
        events(
            {
                "event": "listening",
                "endpoint": transport.endpoint,
                "local_endpoint": transport.local_endpoint,
                "total_steps": server.total_steps,
            }
        )
        server.run()
        transport.close(linger=5.0)  # let the STOP messages reach the workers
        transport = None
        events({"event": "done", "workers": sorted(server.members)})  # the ones told to stop
    except (TimeoutError, ConnectionError, OSError, ValueError, RuntimeError, FloatingPointError) as e:
        print(f"server: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if transport is not None:
            transport.close(linger=1.0)  # an error: let the STOP messages out, briefly
    return 0


def worker_main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="launch worker",
        description="One data-parallel worker: connects to a parameter server and computes gradients.",
    )
    parser.add_argument("--connect", required=True, help="the server's endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--rank", type=int, required=True, help="this worker's rank, 0 .. workers-1")
    parser.add_argument(
        "--join-timeout",
        metavar="SECONDS",
        type=float,
        default=120.0,
        help="give up when the server has not welcomed this worker after this many seconds; once "
        "welcomed, the job's --timeout applies (default: %(default)s)",
    )
    parser.add_argument(
        "--keys",
        metavar="DIR",
        default=None,
        help="folder with worker.key_secret and server.key (written by `launch keygen`); "
        "default: derived from the job token in $NUMPY_CNN_TOKEN or --token-file",
    )
    parser.add_argument("--token-file", metavar="FILE", default=None, help="read the job token from FILE")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="this machine's data folder (default: $NUMPY_CNN_DATA, then the cache, then download), "
        "whatever the server's machine uses",
    )
    parser.add_argument(
        "--watch-stdin",
        action="store_true",
        help="exit when standard input closes (the launcher's lifeline, so no worker outlives it)",
    )
    args = parser.parse_args(argv)
    try:
        spin_seconds(os.environ.get(SPIN_ENV))  # a setting of this machine's: wrong, nothing starts
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.watch_stdin:
        exit_when_stdin_closes(f"worker {args.rank}")
    # one BLAS thread: deterministic bits, and N workers share the cores without oversubscribing
    threadpool_limits(1)
    worker = Worker(args.rank, data_dir=args.data_dir)
    try:
        serve(worker, args.connect, job_keys(args.keys, keys.WORKER, args.token_file), args.join_timeout)
    except ServerSilent as e:
        print(f"worker {args.rank}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_SERVER_SILENT
    except agreement.Disagreement as e:
        print(f"worker {args.rank}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    except (TimeoutError, ConnectionError, ProtocolError, OSError, ValueError) as e:
        print(f"worker {args.rank}: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    if worker.stop_reason != protocol.FINISHED:  # dropped, or the job failed: this node must say so
        said = (
            worker.stop_reason
            if worker.stop_reason.startswith("dropped")
            else f"stopped: {worker.stop_reason}"
        )
        print(f"worker {args.rank}: error: the server {said}", file=sys.stderr, flush=True)
        return 1
    return 0
