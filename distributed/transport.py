"""How messages move: ZeroMQ sockets between processes, or direct calls inside one process.

The server sees one interface, `send(peer, frames)` and `recv(timeout) -> (peer, frames)`, so the
same ParameterServer and Worker classes run over either transport.
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

import zmq

from . import protocol
from .config import JobConfig
from .keys import Keys, allow_only
from .protocol import Message, ProtocolError
from .worker import Worker

log = logging.getLogger("distributed.transport")

HELLO_INTERVAL_S = 1.0  # a worker not yet welcomed says HELLO again this often
CURVE_OVERHEAD = 64  # bytes CURVE adds to a frame: flags, nonce, MAC (33 in libzmq 4.3), rounded up


def _nbytes(frames: Sequence[Any]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


class ZmqServerTransport:
    """The server's ROUTER socket; peers are ZeroMQ routing ids, one per worker connection.

    CURVE encrypts every connection, and a ZAP handler admits only clients holding the job's
    worker key: a peer without it never completes the handshake, so nothing it sends arrives.
    """

    parallel = True  # workers compute at the same time

    def __init__(
        self,
        keys: Keys,
        bind: str = "tcp://127.0.0.1:*",
        max_message_bytes: int = -1,
        io_threads: int = 1,
    ) -> None:
        # CURVE encrypts on the I/O threads, one connection each: more threads, more in parallel
        self.context = zmq.Context(io_threads=io_threads)
        self.auth = allow_only(self.context, keys.peer_public)
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished peer is an error
        # larger frames drop the peer; the limit applies to the encrypted frame, a little longer
        limit = max_message_bytes + CURVE_OVERHEAD if max_message_bytes >= 0 else -1
        self.socket.setsockopt(zmq.MAXMSGSIZE, limit)
        self.socket.curve_secretkey = keys.secret
        self.socket.curve_publickey = keys.public
        self.socket.curve_server = True
        try:
            self.socket.bind(bind)  # port * lets the OS pick a free one
        except zmq.ZMQError as e:
            self.close()
            raise OSError(f"cannot bind {bind}: {e}") from None
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sent_bytes = self.received_bytes = 0

    def send(self, peer: bytes, frames: Sequence[Any]) -> None:
        # copy=False: zmq reads the arrays in place. The server changes its parameters only after
        # every live worker has answered this step, i.e. after these frames have been delivered.
        # (A worker dropped as stuck may still have PARAMS queued; what it reads no longer counts.)
        try:
            self.socket.send_multipart([peer, *frames], copy=False, flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:
            raise ConnectionError(f"cannot send to peer {peer.hex()}: {e}") from None
        self.sent_bytes += _nbytes(frames)

    def recv(self, timeout: float) -> tuple[bytes, list] | None:
        if not self.socket.poll(int(timeout * 1000)):
            return None
        peer, *frames = self.socket.recv_multipart(copy=False)
        self.received_bytes += _nbytes(frames)
        return peer.bytes, frames

    def close(self, linger: float = 0.0) -> None:
        """Close the socket; messages still queued are sent for up to `linger` seconds."""
        self.socket.close(linger=int(linger * 1000))
        self.auth.stop()
        self.context.term()


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


def serve_worker(worker: Worker, endpoint: str, keys: Keys, join_timeout: float) -> None:
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
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_serverkey = keys.peer_public
    compute = ComputeThread(worker)
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    poller.register(compute.wake_r, zmq.POLLIN)
    todo: deque[Message] = deque()
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
                reply = compute.take()  # the compute thread's errors are raised here
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
        socket.close(linger=0)
        context.term()


class LocalTransport:
    """Direct calls to in-process workers, for debugging: one thread, so pdb and print work.

    Frames are copied into bytes on the way, as a socket would, so the server and workers
    share no memory and decode exactly what the multiprocess run decodes.
    """

    parallel = False  # workers compute one after the other

    def __init__(self, workers: Sequence[Worker]) -> None:
        self.workers = {f"local-{w.rank}".encode(): w for w in workers}
        self.inbox: deque[tuple[bytes, list]] = deque()
        self.endpoint = "in-process"
        self.sent_bytes = self.received_bytes = 0
        for peer, worker in self.workers.items():
            self._deliver_reply(peer, worker.hello())

    def _deliver_reply(self, peer: bytes, frames: Sequence[Any]) -> None:
        frames = [bytes(memoryview(f).cast("B")) for f in frames]
        self.received_bytes += _nbytes(frames)
        self.inbox.append((peer, frames))

    def send(self, peer: bytes, frames: Sequence[Any]) -> None:
        if peer not in self.workers:
            raise ConnectionError(f"no in-process worker {peer!r}")
        frames = [bytes(memoryview(f).cast("B")) for f in frames]
        self.sent_bytes += _nbytes(frames)
        reply = self.workers[peer].handle(protocol.decode(frames))
        if reply is not None:
            self._deliver_reply(peer, reply)

    def recv(self, timeout: float) -> tuple[bytes, list] | None:
        # nothing queued means nothing will come: there is nobody else to send it
        return self.inbox.popleft() if self.inbox else None

    def close(self, linger: float = 0.0) -> None:
        self.inbox.clear()
