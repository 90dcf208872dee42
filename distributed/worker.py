"""Worker: the training data, the parameters it holds, and its micro-shards' replicas; turns
parameters into shard gradients, streamed bucket by bucket (compute.py).

`Worker` reacts to the server's messages; `serve` (talk.py) runs one over a ZeroMQ socket, talking
on one thread and computing on another. `launch worker --connect ENDPOINT --rank R` runs one as a process
(`launch` starts its own that way); `launch --single-process` drives Workers in the launcher.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from numpy_cnn import buckets
from numpy_cnn.data import MNIST, global_batch, load, steps_per_epoch
from numpy_cnn.models import input_shape
from numpy_cnn.shards import leaves_of, shard_bounds, tree_nodes
from numpy_cnn.trace import OFF

from . import agreement, protocol
from .compute import ShardJob
from .config import JobConfig
from .lane import NAME as LANE_NAME
from .lane import Lane
from .memory import open_file
from .protocol import Message, ProtocolError
from .ranks import parse_nodes, worker_shards
from .stats import boot_id
from .talk import ServerSilent, serve  # noqa: F401  (the worker's process runs these)
from .tracing import process_trace, worker_pid

log = logging.getLogger("numpy_cnn.distributed.worker")

EXIT_SERVER_SILENT = 3  # the exit status that tells the launcher the server, not this worker, failed
EXIT_REFUSED = 4  # this machine differs from the server's (agreement.py): a restart would refuse again


class Worker:
    """Rank, the parameters it holds (by bucket and version), and its micro-shards' replicas;
    built by WELCOME."""

    def __init__(self, rank: int, data: MNIST | None = None, data_dir: str | None = None) -> None:
        self.rank = rank
        self.data = data
        self.data_dir = data_dir  # where this machine keeps the data (None: NUMPY_CNN_DATA, the cache)
        self.folder: str | None = None  # the server's private folder, reached through ipc:// (talk.py)
        self.shared: np.ndarray | None = None  # the server's parameters, both buffers, where mapped
        self.lane: Lane | None = None  # connected by WELCOME, until Talk takes it (lane.py)
        self.config: JobConfig | None = None
        self.stopped = False
        self.stop_reason = ""
        self.progress = 0  # micro-shards and buckets computed so far
        self.last: tuple[int, int, list[int]] | None = None  # (epoch, index, leaves) just computed
        self.prepared: dict[tuple[int, int, int], tuple] = {}  # next step's (x or its columns, y)
        self.made: list[float] = []  # when it made them: [start, seconds], for the next GRADS
        self.taken: dict[int, list[float]] = {}  # step -> when each bucket of its update came
        # UPDATEs arrive on the talking thread while a job may take parameters on the compute thread
        self.lock = threading.Lock()
        self.trace = OFF  # the job's config says whether to trace (_setup)

    def hello(self) -> list:
        return protocol.encode(protocol.HELLO, rank=self.rank, pid=os.getpid(), boot=boot_id())

    def handle(self, msg: Message, send: Callable[[list], None] | None = None) -> list[list]:
        """React to one message from the server; returns the replies' frames that were not given
        to `send` (a PARAMS job gives each bucket's GRADS to `send` as soon as it is ready)."""
        replies: list[list] = []
        send = replies.append if send is None else send
        if msg.type == protocol.WELCOME:
            self._setup(msg)
            token = self.lane.token.hex() if self.lane is not None else ""
            replies.append(protocol.encode(protocol.READY, rank=self.rank, lane=token))
        elif msg.type == protocol.PARAMS:
            self._step(msg, send)
        elif msg.type == protocol.UPDATE:
            self._update(msg)
        elif msg.type == protocol.STOP:
            log.info(
                "worker %d: stopping (%s), peak resident memory %d MB",
                self.rank,
                msg["reason"],
                peak_rss_mb(),
            )
            self.stopped = True
            self.stop_reason = msg["reason"]
            self.trace.save()  # the launcher on the server's machine merges it into --trace
        elif msg.type != protocol.HEARTBEAT:
            raise ProtocolError(f"worker {self.rank} does not expect a {msg.type} message")
        return replies

    def _setup(self, msg: Message) -> None:
        if msg["rank"] != self.rank:
            raise ProtocolError(f"welcomed as rank {msg['rank']}, but this is rank {self.rank}")
        try:
            config = JobConfig.from_dict(msg["config"])
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"bad job config from the server: {e}") from None
        if self.data is None:  # this machine's copy, found the usual way: not the server's path
            self.data = load(config.dataset, self.data_dir)
        net = agreement.replica(config, self.data, msg["expect"])
        self.buckets = buckets.plan(net, config.bucket_cap)
        self.layout = buckets.Layout.of(net, self.buckets)  # each bucket comes as one flat frame
        self.dtype = net.parameters[0].dtype
        area = self._map(msg["memory"], config)
        with self.lock:  # the parameters come with the first PARAMS; nothing is held yet
            self.current: list[np.ndarray | None] = [None] * len(net.parameters)
            self.held = [-1] * len(self.buckets)  # the version of each bucket in `current`
        self.shape = input_shape(config.model, self.data)
        self.job = ShardJob(config.model, config.seed, config.dtype, self.layout, self.data, area)
        # the server leaves --trace out of the config of a worker on another machine (another clock)
        self.trace = process_trace(
            config, f"worker-{self.rank}", worker_pid(self.rank), f"worker {self.rank}"
        )
        self.config = config
        lo, hi = worker_shards(self.rank, config.workers, config.shards)
        log.info(
            "worker %d: %s, micro-shards [%d, %d) of %d, buckets %s, pid %d",
            self.rank,
            config.model,
            lo,
            hi,
            config.shards,
            self.buckets,
            os.getpid(),
        )

    def _map(self, memory: dict, config: JobConfig) -> dict | None:
        """Map the server's parameters and this worker's gradient file, if WELCOME offers them
        (memory.py); returns where each tree node's gradient lies in the file."""
        self.shared = None
        if self.lane is not None:  # connected for an earlier WELCOME, never taken
            self.lane.close()
            self.lane = None
        if not memory:
            return None
        if self.folder is None or not {"params", "grads"} <= set(memory) <= {"params", "grads", "lane"}:
            raise ProtocolError(f"shared memory {memory!r} offered to a worker that cannot map it")
        size, itemsize = self.layout.size, self.dtype.itemsize
        nodes = tree_nodes(config.shards)  # a slot each, in this order (the server's too)
        try:
            params = open_file(memory["params"], self.folder, 2 * size * itemsize, writable=False)
            grads = open_file(memory["grads"], self.folder, len(nodes) * size * itemsize, writable=True)
        except (OSError, TypeError, ValueError) as e:
            raise ProtocolError(f"cannot map the server's shared memory: {e}") from None
        self.shared = params.array(self.dtype, (2, size))
        # each bucket's parameters in each buffer, made once: a step only picks the buffer
        self.side_views = [
            [self.layout.bucket_views(b, side[self.layout.span(b)]) for b in range(len(self.buckets))]
            for side in self.shared
        ]
        if "lane" in memory:
            if memory["lane"] != os.path.join(self.folder, LANE_NAME):
                raise ProtocolError(f"a lane {memory['lane']!r} outside the server's folder {self.folder}")
            try:
                self.lane = Lane(memory["lane"], config.timeout)  # a send waits as long
            except OSError as e:  # everything goes over ZeroMQ then
                log.warning("worker %d: could not connect the lane %s: %s", self.rank, memory["lane"], e)
        return dict(zip(nodes, grads.array(self.dtype, (len(nodes), size))))

    def _update(self, msg: Message) -> None:
        """A bucket's new values: held from now on (the job in progress keeps the ones it took)."""
        if self.config is None:
            raise ProtocolError("an update before the job's config")
        b = msg["bucket"]
        if not 0 <= b < len(self.buckets):
            raise ProtocolError(f"update of bucket {b}; there are {len(self.buckets)}")
        views = self._views([b], msg.arrays, [msg["side"]] if msg["side"] != -1 else [], f"bucket {b}")
        with self.lock:
            self._hold(b, msg["version"], views[0], msg["step"])

    def _hold(self, b: int, version: int, views: list[np.ndarray], step: int) -> None:
        """Hold these values of bucket b (its parameters' views) unless it holds newer ones; they
        are step `step`'s update (the next GRADS reports when they came). Under the lock."""
        if version > self.held[b]:
            for i, a in zip(self.buckets[b], views):
                self.current[i] = a  # a read-only view of the frame or the shared buffer, no copy
            self.held[b] = version
            self.taken.setdefault(step, [0.0] * len(self.buckets))[b] = time.monotonic()
            for old in [s for s in self.taken if s < step]:
                del self.taken[old]

    def _weights(self, msg: Message) -> list[np.ndarray]:
        """The parameters a PARAMS job computes with: those of the buckets it carries (the worker
        then holds those it held older), and those held of the others, which must be of its
        version."""
        version, carried = msg["version"], msg["carried"]
        n = len(self.buckets)
        if not all(type(b) is int and 0 <= b < n for b in carried) or carried != sorted(set(carried)):
            raise ProtocolError(f"carried buckets {carried!r} are not ascending buckets of this net's {n}")
        carried_views = self._views(carried, msg.arrays, msg["sides"], "parameters")
        given = {}
        for b, views in zip(carried, carried_views):
            given.update(zip(self.buckets[b], views))
        with self.lock:
            for b, views in zip(carried, carried_views):  # the last step's update of b, if it is news
                self._hold(b, version, views, msg["step"] - 1)
            if any(h != version for b, h in enumerate(self.held) if b not in carried):
                raise ProtocolError(f"asked to compute version {version} but holds versions {self.held}")
            return [given.get(i, current) for i, current in enumerate(self.current)]

    def _views(
        self, buckets: Sequence[int], arrays: Sequence[np.ndarray], sides: Sequence[int], what: str
    ) -> list[list[np.ndarray]]:
        """These buckets' values, as their parameters' views (in each bucket's order): of the
        arrays a message carries, or, for a worker that maps the server's parameters, of the
        buffers (`sides`) that hold them (made once: `side_views`)."""
        if sides:
            if self.shared is None or arrays or len(sides) != len(buckets) or not set(sides) <= {0, 1}:
                raise ProtocolError(f"{what}: buffers {sides!r} of shared parameters this worker cannot read")
            return [self.side_views[side][b] for b, side in zip(buckets, sides)]
        shapes = [((self.layout.length(b),), self.dtype) for b in buckets]
        if len(arrays) != len(shapes) or any((a.shape, a.dtype) != s for a, s in zip(arrays, shapes)):
            raise ProtocolError(f"{what} do not match this worker's net")
        return [self.layout.bucket_views(b, a) for b, a in zip(buckets, arrays)]

    def prepare_next(self, until: Callable[[], bool] = lambda: False) -> None:
        """While the gradients travel and the server runs Adam, make the samples of the next
        batch's micro-shards this worker will most likely own (the same ones), and, while streaming,
        what the forward pass makes of them before it reads a weight (ShardJob.lower), so that
        only the rest of it waits for the parameters. The same functions make them: the same bits.
        It stops between shards once `until()` is true (the parameters are there): the job makes
        the rest itself."""
        if self.last is None:
            return
        (epoch, index, leaves), self.last = self.last, None
        train, config = self.data.train, self.config
        if index + 1 < steps_per_epoch(len(train), config.batch_size):
            epoch, index = epoch, index + 1
        else:
            epoch, index = epoch + 1, 0
        batch = global_batch(len(train), config.batch_size, config.seed, epoch, index, config.max_shift)
        bounds = shard_bounds(len(batch), config.shards)
        # with one bucket, the processes outnumber the cores (config.local_buckets): the columns
        # would take a core from the server's work on the step, which they are waiting for
        lower = self.job.lower if config.buckets != "one" else lambda k, x: x
        prepared, start = {}, time.monotonic()
        with self.trace.span("prepare next batch"):
            for k in leaves:
                if until():
                    break
                x, y = batch.samples(train.images, train.labels, self.shape, *bounds[k])
                prepared[(epoch, index, k)] = (lower(k, x), y)
        self.prepared = prepared
        # the server counts this as computing too (stats.EpochStats): a worker making its next
        # batch is not waiting for the wire, even where the server waits for its core
        self.made = [start, time.monotonic() - start] if prepared else []

    def _step(self, msg: Message, send: Callable[[list], None]) -> None:
        """Forward and backward every micro-shard under the job's nodes, in turn, sending each
        wanted bucket's GRADS as soon as the last shard's backward pass has made it final
        (compute.py)."""
        if self.config is None:
            raise ProtocolError("parameters before the job's config")
        config, train = self.config, self.data.train
        try:
            nodes = parse_nodes(msg["nodes"], config.shards)
        except ValueError as e:
            raise ProtocolError(str(e)) from None
        wanted = msg["buckets"]
        if not wanted or not all(type(b) is int and 0 <= b < len(self.buckets) for b in wanted):
            raise ProtocolError(f"buckets {wanted!r} are not a list of this net's {len(self.buckets)}")
        weights = self._weights(msg)
        started = time.monotonic()
        epoch, index = msg["epoch"], msg["index"]
        batch = global_batch(len(train), config.batch_size, config.seed, epoch, index, config.max_shift)
        if len(batch) == 0:
            raise ProtocolError(f"epoch {epoch} has no batch {index}")
        self.trace.at_step(msg["step"] + 1)
        with self.trace.span("step", step=msg["step"] + 1):
            self._compute(msg, nodes, weights, started, batch, send)

    def _compute(
        self, msg: Message, nodes: list, weights: list, started: float, batch, send: Callable[[list], None]
    ) -> None:
        config, train, trace = self.config, self.data.train, self.trace
        epoch, index, wanted = msg["epoch"], msg["index"], msg["buckets"]
        bounds = shard_bounds(len(batch), config.shards)
        leaves = leaves_of(nodes)
        loss_sum, correct, last = 0.0, 0, None
        for n, k in enumerate(leaves):  # forward and backward, shard after shard (compute.py)
            lo, hi = bounds[k]
            x, y = self.prepared.pop((epoch, index, k), None) or batch.samples(
                train.images, train.labels, self.shape, lo, hi
            )
            noise = (config.seed, epoch, index, lo)  # Dropout's masks: by sample
            with trace.span("forward", shard=k):
                loss, right, grad = self.job.forward(k, weights, x, y, len(batch), noise)
            loss_sum += loss
            correct += right
            if n < len(leaves) - 1:  # nothing to send yet: the last shard's backward sends it all
                with trace.span("backward", shard=k):
                    self.job.backward(k, grad, [], [], started, _ignore, self._progressed)
            else:
                last = (k, grad)
            self.progress += 1  # heartbeats go out only while this number moves (see serve)
        self.last = (epoch, index, leaves)
        with self.lock:  # the step before's UPDATEs all came before this job's PARAMS
            taken = list(self.taken.get(msg["step"] - 1, [0.0] * len(self.buckets)))
        fields = dict(
            step=msg["step"],
            version=msg["version"],
            rank=self.rank,
            nodes=[list(n) for n in nodes],
            counts=[bounds[hi - 1][1] - bounds[lo][0] for lo, hi in nodes],
            loss=loss_sum,
            correct=correct,
            started=started,
            taken=taken,
            prepared=self.made,
        )
        self.made = []

        shared = self.job.area is not None  # the sums are written in the gradient file, at their nodes

        def emit(bucket: int, arrays: list[np.ndarray], seconds: float) -> None:
            arrays = [] if shared else arrays
            send(
                protocol.encode(
                    protocol.GRADS, arrays, bucket=bucket, compute_s=seconds, shared=shared, **fields
                )
            )
            trace.instant("bucket sent", always=False, bucket=bucket)

        k, grad = last  # its backward pass sends each bucket as soon as it is final
        with trace.span("backward", shard=k):
            self.job.backward(k, grad, nodes, wanted, started, emit, self._progressed)

    def _progressed(self) -> None:
        self.progress += 1


def _ignore(*_: object) -> None:
    """Where a shard's backward pass that sends nothing would send."""


def peak_rss_mb() -> int:
    """This process's peak resident set size, in MB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
