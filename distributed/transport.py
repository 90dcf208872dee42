"""How the server's messages move: ZeroMQ sockets between processes, or direct calls inside one.

The server sees one interface, `Transport`, so the same ParameterServer runs over either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import zmq

from . import protocol
from .keys import Keys, allow_only
from .protocol import Message

CURVE_OVERHEAD = 64  # bytes CURVE adds to a frame: flags, nonce, MAC (33 in libzmq 4.3), rounded up


class Transport(Protocol):
    """What the server needs of a transport: addressed sends, timed receives, byte counts."""

    parallel: bool  # whether the workers compute at the same time (False: one after the other)
    endpoint: str
    sent_bytes: int
    received_bytes: int

    def send(self, peer: bytes, frames: Sequence[Any]) -> None:
        """Queue `frames` for `peer`; ConnectionError if it cannot be reached."""

    def recv(self, timeout: float) -> tuple[bytes, list] | None:
        """The next (peer, frames), or None after `timeout` seconds."""

    def close(self, linger: float = 0.0) -> None:
        """Let queued messages out for up to `linger` seconds, then release everything."""


class Handler(Protocol):
    """An in-process worker as LocalTransport drives it (distributed.worker.Worker)."""

    rank: int

    def hello(self) -> list: ...

    def handle(self, msg: Message) -> list | None: ...


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


class LocalTransport:
    """Direct calls to in-process workers, for debugging: one thread, so pdb and print work.

    Frames are copied into bytes on the way, as a socket would, so the server and workers
    share no memory and decode exactly what the multiprocess run decodes.
    """

    parallel = False  # workers compute one after the other

    def __init__(self, workers: Sequence[Handler]) -> None:
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
