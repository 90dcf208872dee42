"""How messages move: ZeroMQ sockets between processes, or direct calls inside one process.

The server sees one interface, `send(peer, frames)` and `recv(timeout) -> (peer, frames)`, so the
same ParameterServer and Worker classes run over either transport.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import zmq

from .protocol import ProtocolError, decode
from .worker import Worker

log = logging.getLogger("distributed.transport")


def _nbytes(frames: Sequence[Any]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


class ZmqServerTransport:
    """The server's ROUTER socket; peers are ZeroMQ routing ids, one per worker connection."""

    parallel = True  # workers compute at the same time

    def __init__(self, bind: str = "tcp://127.0.0.1:*", max_message_bytes: int = -1) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished peer is an error
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)  # larger frames drop the peer
        try:
            self.socket.bind(bind)  # port * lets the OS pick a free one
        except zmq.ZMQError as e:
            self.close()
            raise OSError(f"cannot bind {bind}: {e}") from None
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sent_bytes = self.received_bytes = 0

    def send(self, peer: bytes, frames: Sequence[Any]) -> None:
        # copy=False: zmq reads the arrays in place. The server changes its parameters only after
        # every worker has answered this step, i.e. after these frames have been delivered.
        try:
            self.socket.send_multipart([peer, *frames], copy=False)
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
        self.context.term()


def serve_worker(worker: Worker, endpoint: str, timeout: float) -> None:
    """Run `worker` over a DEALER socket connected to the server until it is told to stop."""
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(endpoint)
        socket.send_multipart(worker.hello())
        while not worker.stopped:
            if not socket.poll(int(timeout * 1000)):
                raise TimeoutError(f"no message from the server at {endpoint} for {timeout:g} s")
            frames = socket.recv_multipart(copy=False)
            try:
                reply = worker.handle(decode(frames))
            except ProtocolError as e:
                log.warning("worker %d: rejected a message from the server: %s", worker.rank, e)
                continue
            if reply is not None:
                socket.send_multipart(reply, copy=False)
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
        reply = self.workers[peer].handle(decode(frames))
        if reply is not None:
            self._deliver_reply(peer, reply)

    def recv(self, timeout: float) -> tuple[bytes, list] | None:
        # nothing queued means nothing will come: there is nobody else to send it
        return self.inbox.popleft() if self.inbox else None

    def close(self, linger: float = 0.0) -> None:
        self.inbox.clear()
