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
from zmq.utils.monitor import recv_monitor_message

from numpy_cnn.data import MNIST, global_batch, load, steps_per_epoch
from numpy_cnn.loss import CrossEntropyLoss
from numpy_cnn.models import input_shape
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
EXIT_REFUSED = 4  # this machine differs from the server's (agreement.py): a restart would refuse again


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
        if self.data is None:  # this machine's copy, found the usual way: not the server's path
            self.data = load(config.dataset, self.data_dir)
        self.net = agreement.replica(config, self.data, msg["expect"])
        self.params = self.net.parameters
        self.shape = input_shape(config.model, self.data)
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
            noise = (config.seed, msg["epoch"], msg["index"], lo)  # Dropout's masks: by sample
            loss, right = shard_gradient(self.net, self.loss, x, y, len(batch), noise)
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


class Link:
    """One DEALER socket to the server (CURVE over tcp://), and a monitor that says when it drops.

    A worker that loses its server opens a fresh Link rather than reusing the old socket: nothing
    queued for the old server (a late gradient, a heartbeat) can then reach the one replacing it,
    and the new connection starts with a fresh CURVE handshake.
    """

    def __init__(self, context: zmq.Context, endpoint: str, keys: Keys, send_timeout: float) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDTIMEO, int(send_timeout * 1000))  # a send that cannot be queued fails
        if not endpoint.startswith("ipc://"):  # a Unix socket in the server's private folder needs no CURVE
            self.socket.curve_secretkey = keys.secret
            self.socket.curve_publickey = keys.public
            self.socket.curve_serverkey = keys.peer_public
        self.monitor = self.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            self.socket.connect(endpoint)
        except zmq.ZMQError:
            self.close()  # else the context could never be terminated
            raise

    def dropped(self) -> bool:
        """Whether the connection has dropped since the last call (reads the monitor's events)."""
        gone = False
        while self.monitor.poll(0):
            gone |= recv_monitor_message(self.monitor)["event"] == zmq.EVENT_DISCONNECTED
        return gone

    def close(self, linger: float = 0.0) -> None:
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=int(linger * 1000))


class Talk:
    """The talking side of `serve`: the connection to the server, what it has said, and when.

    A worker that a server has welcomed and that then loses it (silent for --timeout, or the
    connection drops) goes back to saying HELLO on a fresh Link, if the job can bring its server
    back (--checkpoint-dir and --max-restarts above 0: the launcher restarts a dead server from its
    newest checkpoint, at the same address). It gives up after --join-timeout with ServerSilent.
    Each Link is a generation: an answer computed for an older one is dropped, never sent on.
    """

    def __init__(self, worker: Worker, endpoint: str, keys: Keys, join_timeout: float) -> None:
        self.worker, self.endpoint, self.keys, self.join_timeout = worker, endpoint, keys, join_timeout
        self.context = zmq.Context()
        self.compute = ComputeThread(worker)
        self.poller = zmq.Poller()
        self.poller.register(self.compute.wake_r, zmq.POLLIN)
        self.link: Link | None = None
        self.generation = 0  # one per Link
        self.job_generation = 0  # the Link the compute thread's current job came in on
        self.computing = False  # the current job is a gradient (not the setup)
        self.rejoining = False  # a server welcomed this worker, then went away
        self.may_rejoin = False  # the job's server can come back (from the welcome's config)
        self.linger = 0.0  # seconds the last message may take to leave when the socket closes
        try:
            self._connect()
        except zmq.ZMQError:
            self.context.term()
            raise

    def _connect(self) -> None:
        """A fresh Link; not welcomed yet: HELLO every second until `join_timeout`."""
        if self.link is not None:
            self.poller.unregister(self.link.socket)
            self.poller.unregister(self.link.monitor)
            self.link.close()
        self.link = Link(self.context, self.endpoint, self.keys, self.join_timeout)
        self.poller.register(self.link.socket, zmq.POLLIN)
        self.poller.register(self.link.monitor, zmq.POLLIN)
        self.generation += 1
        self.todo: deque[Message] = deque()  # what the server sent, for the compute thread
        self.welcomed = False
        self.answered = 0  # PARAMS of this Link finished
        self.timeout, self.interval = self.join_timeout, HELLO_INTERVAL_S
        self.heard = self.beat_due = time.monotonic()
        self.beat_progress = -1

    def send(self, frames: Sequence[Any]) -> None:
        try:
            self.link.socket.send_multipart(frames, copy=False)
        except zmq.Again:
            raise ConnectionError(f"cannot send to the server at {self.endpoint}: nothing leaves") from None

    def close(self) -> None:
        self.link.close(self.linger)
        self.context.term()

    def _lost(self, why: str) -> None:
        """The server that welcomed this worker is gone: say HELLO to the one replacing it, or give up."""
        if not self.may_rejoin:
            raise ServerSilent(why)
        log.warning(
            "worker %d: %s; saying HELLO until a server welcomes it back (up to %g s)",
            self.worker.rank,
            why,
            self.join_timeout,
        )
        self.rejoining = True
        self._connect()

    def run(self) -> None:
        worker, compute = self.worker, self.compute
        while not worker.stopped:
            if compute.busy and compute.result is not None:
                try:
                    reply = compute.take()  # the compute thread's errors are raised here
                except agreement.Disagreement as e:  # tell the server why, then end
                    self.send(protocol.encode(protocol.REFUSE, rank=worker.rank, reason=str(e)))
                    self.linger = 1.0
                    raise
                if self.job_generation == self.generation:  # else: for a server that is gone
                    if reply is not None:
                        self.send(reply)
                    self.answered += self.computing
            if not compute.busy and self.todo:
                msg = self.todo.popleft()
                self.computing = msg.type == protocol.PARAMS
                self.job_generation = self.generation
                compute.submit(msg)
            now = time.monotonic()
            if now >= self.beat_due:
                if not self.welcomed:
                    self.send(worker.hello())  # again and again: the rank may not be free yet
                elif not (compute.busy and self.computing and worker.progress == self.beat_progress):
                    self.send(protocol.encode(protocol.HEARTBEAT, rank=worker.rank, answered=self.answered))
                self.beat_progress, self.beat_due = worker.progress, now + self.interval
            if now - self.heard > self.timeout:
                if self.welcomed:
                    silent = f"has not said anything for {self.timeout:g} s: it is gone or stuck"
                    self._lost(f"the server at {self.endpoint} {silent}")
                    continue
                if self.rejoining:
                    raise ServerSilent(
                        f"the server at {self.endpoint} went away, and none welcomed this worker back "
                        f"within {self.timeout:g} s"
                    )
                raise TimeoutError(
                    f"the server at {self.endpoint} did not welcome this worker in {self.timeout:g} s"
                )
            wait = max(0.0, min(self.beat_due, self.heard + self.timeout) - now)
            ready = dict(self.poller.poll(wait * 1000 + 1))
            if self.link.socket in ready:
                self._receive()
            # without a way back for the server, a dropped connection is left to ZeroMQ to mend
            elif self.link.monitor in ready and self.link.dropped() and self.welcomed and self.may_rejoin:
                while self.link.socket.poll(0) and not worker.stopped:  # what it said before it went
                    self._receive()  # (a STOP, at the end of the job)
                if not worker.stopped:
                    self._lost(f"the connection to the server at {self.endpoint} dropped")
            # the compute thread's wake-up is handled at the top of the loop

    def _receive(self) -> None:
        frames = self.link.socket.recv_multipart(copy=False)
        self.heard = time.monotonic()
        try:
            msg = protocol.decode(frames)
        except ProtocolError as e:
            log.warning("worker %d: rejected a message from the server: %s", self.worker.rank, e)
            return
        if msg.type == protocol.WELCOME and not self.welcomed:
            try:  # from now on, the job's timeout, as the server counts it
                config = JobConfig.from_dict(msg["config"])
            except (TypeError, ValueError) as e:
                raise ProtocolError(f"bad job config from the server: {e}") from None
            self.timeout = config.timeout
            self.interval = self.timeout / protocol.HEARTBEATS_PER_TIMEOUT
            self.may_rejoin = bool(config.checkpoint_dir) and config.max_restarts > 0
            if self.rejoining:
                log.info("worker %d: welcomed back by the server at %s", self.worker.rank, self.endpoint)
            self.welcomed = True
            self.todo.append(msg)
        elif msg.type == protocol.PARAMS:
            self.todo.append(msg)
        else:
            try:
                self.worker.handle(msg)  # HEARTBEAT, STOP: nothing to compute
            except ProtocolError as e:
                log.warning("worker %d: rejected a message from the server: %s", self.worker.rank, e)


def serve(worker: Worker, endpoint: str, keys: Keys, join_timeout: float) -> None:
    """Run `worker` over a CURVE DEALER socket connected to the server until it is told to stop.

    This thread only talks: it sends HELLO every second until welcomed (giving up after
    `join_timeout`), then heartbeats, and notices a server silent for the job's --timeout, which
    the welcome carries, or a dropped connection; then it says HELLO again if the job's server can
    come back (see Talk). The work (setup, gradients) runs on one compute thread; an error there
    ends the worker. While a gradient is being computed, a heartbeat goes out only if a
    micro-shard has finished since the last one, so a computation that hangs goes silent like a
    dead process does. Each heartbeat says how many PARAMS this worker has answered, so the
    server can tell an answer it rejected from one still being computed.
    """
    talk = Talk(worker, endpoint, keys, join_timeout)
    try:
        talk.run()
    finally:
        talk.close()
