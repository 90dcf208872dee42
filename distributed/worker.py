"""Worker: one replica of the net and the training data; turns parameters into shard gradients.

`Worker` reacts to the server's messages; `serve` runs one over a ZeroMQ socket, talking on one
thread and computing on another. `launch worker --connect ENDPOINT --rank R` runs one as a process
(`launch` starts its own that way); `launch --single-process` drives Workers in the launcher.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from numpy_cnn.data import MNIST, global_batch, load, steps_per_epoch
from numpy_cnn.loss import CrossEntropyLoss
from numpy_cnn.models import build, input_shape
from numpy_cnn.shards import leaves_of, shard_bounds, shard_gradient, tree_sum

from . import agreement, protocol
from .config import JobConfig
from .keys import Keys
from .protocol import Message, ProtocolError
from .ranks import parse_nodes, worker_shards
from .stats import boot_id

log = logging.getLogger("numpy_cnn.distributed.worker")

HELLO_INTERVAL_S = 1.0  # a worker not yet welcomed says HELLO again this often

EXIT_SERVER_SILENT = 3  # the exit status that tells the launcher the server, not this worker, failed


class Worker:
    """Rank, replica, and one gradient buffer set per owned micro-shard; built by WELCOME."""

    def __init__(self, rank: int, data: MNIST | None = None, data_dir: str | None = None) -> None:
        self.rank = rank
        self.data = data
        self.data_dir = data_dir  # where this machine keeps the data (None: NUMPY_CNN_DATA, the cache)
        self.config: JobConfig | None = None
        self.stopped = False
        self.stop_reason = ""
        self.progress = 0  # micro-shards computed so far
        self.last: tuple[int, int, list[int]] | None = None  # (epoch, index, leaves) just computed
        self.prepared: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}  # next step's

    def hello(self) -> list:
        return protocol.encode(protocol.HELLO, rank=self.rank, pid=os.getpid(), boot=boot_id())

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
        self.net = build(config.model, seed=config.seed, dtype=config.dtype)
        agreement.check(msg["expect"], agreement.identity(self.net, config.dataset))
        if self.data is None:  # this machine's copy, found the usual way: not the server's path
            self.data = load(config.dataset, self.data_dir)
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

    def prepare_next(self) -> None:
        """While the gradients travel and the server runs Adam, make the samples of the next
        batch's micro-shards this worker will most likely own (the same ones), so that only the
        forward pass waits for the parameters. The same function makes them: the same bits."""
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
        self.prepared = {
            (epoch, index, k): batch.samples(train.images, train.labels, self.shape, *bounds[k])
            for k in leaves
        }

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
        started, start = time.monotonic(), time.perf_counter()
        for p, a in zip(self.params, msg.arrays):
            p.data = a  # read-only view of the received frame; forward only reads weights
        config, train = self.config, self.data.train
        batch = global_batch(
            len(train), config.batch_size, config.seed, msg["epoch"], msg["index"], config.max_shift
        )
        if len(batch) == 0:
            raise ProtocolError(f"epoch {msg['epoch']} has no batch {msg['index']}")
        bounds = shard_bounds(len(batch), config.shards)
        loss_sum, correct = 0.0, 0
        for k in leaves_of(nodes):
            lo, hi = bounds[k]
            grads = self.leaf_grads.get((k, k + 1))
            if grads is None:
                grads = self.leaf_grads[(k, k + 1)] = [np.zeros_like(p.data) for p in self.params]
            for p, g in zip(self.params, grads):
                p.grad = g  # backward writes straight into this shard's buffers
            x, y = self.prepared.pop((msg["epoch"], msg["index"], k), None) or batch.samples(
                train.images, train.labels, self.shape, lo, hi
            )
            loss, right = shard_gradient(self.net, self.loss, x, y, len(batch))
            loss_sum += loss
            correct += right
            self.progress += 1  # heartbeats go out only while this number moves (see serve)
        self.last = (msg["epoch"], msg["index"], leaves_of(nodes))
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
            started=started,
        )


def peak_rss_mb() -> int:
    """This process's peak resident set size, in MB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


class ServerSilent(TimeoutError):
    """The server, after welcoming this worker, said nothing for the job's --timeout."""


class ComputeThread:
    """One daemon thread that runs `worker.handle` on one message at a time.

    A daemon, so a computation that hangs never keeps the process from exiting. When a job ends,
    a byte on a pipe wakes the talking thread's poll. The pipe is never closed: the thread may
    still write to it after the talking thread has given up, and the process ends soon after.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.wake_r, self.wake_w = os.pipe()
        self.jobs: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.result: tuple[list | None, BaseException | None] | None = None
        self.busy = False
        threading.Thread(target=self._run, name="compute", daemon=True).start()

    def submit(self, msg: Message) -> None:
        self.busy, self.result = True, None
        self.jobs.put(msg)

    def take(self) -> list | None:
        """The finished job's reply; raises what the job raised."""
        os.read(self.wake_r, 1)
        (reply, error), self.result, self.busy = self.result, None, False
        if error is not None:
            raise error
        return reply

    def _run(self) -> None:
        while True:
            msg = self.jobs.get()
            try:
                self.result = (self.worker.handle(msg), None)
            except BaseException as e:  # handed to the talking thread, which raises it
                self.result = (None, e)
            os.write(self.wake_w, b".")
            if self.jobs.empty():
                try:  # idle until the next parameters arrive: get their batch ready
                    self.worker.prepare_next()
                except Exception as e:  # only a head start: the step makes its samples itself
                    log.warning("worker %d: could not prepare the next batch: %s", self.worker.rank, e)


def serve(worker: Worker, endpoint: str, keys: Keys, join_timeout: float) -> None:
    """Run `worker` over a CURVE DEALER socket connected to the server until it is told to stop.

    This thread only talks: it sends HELLO every second until welcomed (giving up after
    `join_timeout`), then heartbeats, and notices a server silent for the job's --timeout, which
    the welcome carries. The work (setup, gradients) runs on one compute thread; an error there
    ends the worker. While a gradient is being computed, a heartbeat goes out only if a
    micro-shard has finished since the last one, so a computation that hangs goes silent like a
    dead process does. Each heartbeat says how many PARAMS this worker has answered, so the
    server can tell an answer it rejected from one still being computed.
    """
    timeout, interval = join_timeout, HELLO_INTERVAL_S
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDTIMEO, int(join_timeout * 1000))  # a send that cannot be queued fails
    if not endpoint.startswith("ipc://"):  # a Unix socket in the server's private folder needs no CURVE
        socket.curve_secretkey = keys.secret
        socket.curve_publickey = keys.public
        socket.curve_serverkey = keys.peer_public
    compute = ComputeThread(worker)
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    poller.register(compute.wake_r, zmq.POLLIN)
    todo: deque[Message] = deque()
    linger = 0.0  # seconds the last messages may take to leave when the socket closes
    computing = False  # the current job is a gradient (not the setup)
    welcomed = False
    answered = 0  # PARAMS messages finished

    def send(frames: Sequence[Any]) -> None:
        try:
            socket.send_multipart(frames, copy=False)
        except zmq.Again:
            raise ConnectionError(f"cannot send to the server at {endpoint}: nothing leaves") from None

    try:
        socket.connect(endpoint)
        heard = beat_due = time.monotonic()
        beat_progress = -1
        while not worker.stopped:
            if compute.busy and compute.result is not None:
                try:
                    reply = compute.take()  # the compute thread's errors are raised here
                except agreement.Disagreement as e:  # tell the server why, then end
                    send(protocol.encode(protocol.REFUSE, rank=worker.rank, reason=str(e)))
                    linger = 1.0
                    raise
                if reply is not None:
                    send(reply)
                answered += computing
            if not compute.busy and todo:
                msg = todo.popleft()
                computing = msg.type == protocol.PARAMS
                compute.submit(msg)
            now = time.monotonic()
            if now >= beat_due:
                if not welcomed:
                    send(worker.hello())  # again and again: the rank may not be free yet
                elif not (compute.busy and computing and worker.progress == beat_progress):
                    send(protocol.encode(protocol.HEARTBEAT, rank=worker.rank, answered=answered))
                beat_progress, beat_due = worker.progress, now + interval
            if now - heard > timeout:
                if not welcomed:
                    raise TimeoutError(
                        f"the server at {endpoint} did not welcome this worker in {timeout:g} s"
                    )
                raise ServerSilent(
                    f"the server at {endpoint} has not said anything for {timeout:g} s: it is gone or stuck"
                )
            wait = max(0.0, min(beat_due, heard + timeout) - now)
            for ready, _ in poller.poll(wait * 1000 + 1):
                if ready is not socket:
                    continue  # the compute thread is done: handled at the top of the loop
                frames = socket.recv_multipart(copy=False)
                heard = time.monotonic()
                try:
                    msg = protocol.decode(frames)
                except ProtocolError as e:
                    log.warning("worker %d: rejected a message from the server: %s", worker.rank, e)
                    continue
                if msg.type == protocol.WELCOME and not welcomed:
                    try:  # from now on, the job's timeout, as the server counts it
                        timeout = JobConfig.from_dict(msg["config"]).timeout
                    except (TypeError, ValueError) as e:
                        raise ProtocolError(f"bad job config from the server: {e}") from None
                    interval = timeout / protocol.HEARTBEATS_PER_TIMEOUT
                    welcomed = True
                    todo.append(msg)
                elif msg.type == protocol.PARAMS:
                    todo.append(msg)
                else:
                    try:
                        worker.handle(msg)  # HEARTBEAT, STOP: nothing to compute
                    except ProtocolError as e:
                        log.warning("worker %d: rejected a message from the server: %s", worker.rank, e)
    finally:
        socket.close(linger=int(linger * 1000))
        context.term()
