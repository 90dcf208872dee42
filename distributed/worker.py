"""Worker: one replica of the net and the training data; turns parameters into shard gradients.

`python -m distributed.worker --connect ENDPOINT --rank R` runs one; `launch` starts them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np

from numpy_cnn.data import MNIST, batch_indices, epoch_order, epoch_shifts, load, shift_images, to_float
from numpy_cnn.loss import CrossEntropyLoss
from numpy_cnn.models import build, input_shape
from numpy_cnn.shards import leaves_of, parse_nodes, shard_bounds, tree_sum, worker_shards
from numpy_cnn.train import shard_gradient

from . import keys, protocol
from .config import JobConfig
from .protocol import Message, ProtocolError

log = logging.getLogger("distributed.worker")

EXIT_SERVER_SILENT = 3  # the exit status that tells the launcher the server, not this worker, failed


class Worker:
    """Rank, replica, and one gradient buffer set per owned micro-shard; built by WELCOME."""

    def __init__(self, rank: int, data: MNIST | None = None) -> None:
        self.rank = rank
        self.data = data
        self.config: JobConfig | None = None
        self.stopped = False
        self.stop_reason = ""
        self.progress = 0  # micro-shards computed so far
        self._order: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, permutation, shifts)

    def hello(self) -> list:
        return protocol.encode(protocol.HELLO, rank=self.rank, pid=os.getpid())

    def handle(self, msg: Message) -> list | None:
        """React to one message from the server; returns the reply's frames, if any."""
        if msg.type == protocol.WELCOME:
            self._setup(msg)
            return protocol.encode(protocol.READY, rank=self.rank)
        if msg.type == protocol.PARAMS:
            return self._step(msg)
        if msg.type == protocol.HEARTBEAT:
            return None
        if msg.type == protocol.STOP:
            log.info(
                "worker %d: stopping (%s), peak resident memory %d MB",
                self.rank,
                msg["reason"],
                peak_rss_mb(),
            )
            self.stopped = True
            self.stop_reason = msg["reason"]
            return None
        raise ProtocolError(f"worker {self.rank} does not expect a {msg.type} message")

    def _setup(self, msg: Message) -> None:
        if msg["rank"] != self.rank:
            raise ProtocolError(f"welcomed as rank {msg['rank']}, but this is rank {self.rank}")
        try:
            config = JobConfig.from_dict(msg["config"])
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"bad job config from the server: {e}") from None
        if self.data is None:
            self.data = load(config.dataset, config.data_dir)
        self.net = build(config.model, seed=config.seed, dtype=config.dtype)
        self.params = self.net.parameters
        self.shape = input_shape(config.model)
        self.loss = CrossEntropyLoss()
        # each micro-shard's backward writes straight into its own buffers (made on first use)
        self.leaf_grads: dict = {}
        self.scratch: dict = {}
        self.config = config
        lo, hi = worker_shards(self.rank, config.workers, config.shards)
        log.info(
            "worker %d: %s, micro-shards [%d, %d) of %d, pid %d",
            self.rank,
            config.model,
            lo,
            hi,
            config.shards,
            os.getpid(),
        )

    def _step(self, msg: Message) -> list:
        if self.config is None:
            raise ProtocolError("parameters before the job's config")
        if len(msg.arrays) != len(self.params) or any(
            a.shape != p.shape or a.dtype != p.dtype for a, p in zip(msg.arrays, self.params)
        ):
            raise ProtocolError("parameters do not match this worker's net")
        try:
            nodes = parse_nodes(msg["nodes"], self.config.shards)
        except ValueError as e:
            raise ProtocolError(str(e)) from None
        start = time.perf_counter()
        for p, a in zip(self.params, msg.arrays):
            p.data = a  # read-only view of the received frame; forward only reads weights
        idx, shifts = self._batch(msg["epoch"], msg["index"])
        bounds = shard_bounds(len(idx), self.config.shards)
        loss_sum, correct = 0.0, 0
        for k in leaves_of(nodes):
            lo, hi = bounds[k]
            grads = self.leaf_grads.get((k, k + 1))
            if grads is None:
                grads = self.leaf_grads[(k, k + 1)] = [np.zeros_like(p.data) for p in self.params]
            for p, g in zip(self.params, grads):
                p.grad = g  # backward writes straight into this shard's buffers
            images = shift_images(self.data.train.images[idx[lo:hi]], shifts[lo:hi], self.config.n_shift)
            y = self.data.train.labels[idx[lo:hi]]
            loss, right = shard_gradient(self.net, self.loss, to_float(images, self.shape), y, len(idx))
            loss_sum += loss
            correct += right
            self.progress += 1  # heartbeats go out only while this number moves (see transport)
        arrays = []
        for node in nodes:
            arrays.extend(tree_sum(node, self.leaf_grads, self.scratch))
        return protocol.encode(
            protocol.GRADS,
            arrays,
            step=msg["step"],
            version=msg["version"],
            rank=self.rank,
            nodes=[list(n) for n in nodes],
            counts=[bounds[hi - 1][1] - bounds[lo][0] for lo, hi in nodes],
            loss=loss_sum,
            correct=correct,
            compute_s=time.perf_counter() - start,
        )

    def _batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample indices and shifts of global batch `index` of `epoch`: the serial trainer's batch."""
        if self._order is None or self._order[0] != epoch:
            n, seed = len(self.data.train), self.config.seed
            self._order = (
                epoch,
                epoch_order(n, seed, epoch),
                epoch_shifts(n, seed, epoch, self.config.n_shift),
            )
        idx = batch_indices(self._order[1], self.config.batch_size, index)
        if len(idx) == 0:
            raise ProtocolError(f"epoch {epoch} has no batch {index}")
        return idx, batch_indices(self._order[2], self.config.batch_size, index)


def peak_rss_mb() -> int:
    """This process's peak resident set size, in MB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distributed.worker",
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
        required=True,
        help="folder with worker.key_secret and server.key (written by `launch keygen`)",
    )
    parser.add_argument(
        "--watch-stdin",
        action="store_true",
        help="exit when standard input closes (the launcher's lifeline, so no worker outlives it)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    from threadpoolctl import threadpool_limits

    from .lifeline import exit_when_stdin_closes
    from .transport import ServerSilent, serve_worker

    if args.watch_stdin:
        exit_when_stdin_closes(f"worker {args.rank}")
    # one BLAS thread: deterministic bits, and N workers share the cores without oversubscribing
    threadpool_limits(1)
    worker = Worker(args.rank)
    try:
        serve_worker(
            worker,
            args.connect,
            keys.read(args.keys, keys.WORKER),
            args.join_timeout,
        )
    except ServerSilent as e:
        print(f"worker {args.rank}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_SERVER_SILENT
    except (TimeoutError, ConnectionError, ProtocolError, OSError, ValueError) as e:
        print(f"worker {args.rank}: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    if worker.stop_reason.startswith("dropped"):
        print(f"worker {args.rank}: error: the server {worker.stop_reason}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
