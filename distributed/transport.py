"""How the server's messages move: ZeroMQ sockets between processes, or direct calls inside one.

The server sees one interface, `Transport`, so the same ParameterServer runs over either.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import zmq

from . import memory, protocol
from .keys import Keys, allow_only
from .lane import Lanes
from .memory import SharedFile
from .protocol import Message

log = logging.getLogger("numpy_cnn.distributed.transport")

CURVE_OVERHEAD = 64  # bytes CURVE adds to a frame: flags, nonce, MAC (33 in libzmq 4.3), rounded up


class Transport(Protocol):
    """What the server needs of a transport: addressed sends, timed receives, byte counts."""

    parallel: bool  # whether the workers compute at the same time (False: one after the other)
    endpoint: str
    sent_bytes: int
    received_bytes: int

    def send(self, peer: bytes, frames: Sequence[Any]) -> None:
        """Queue `frames` for `peer`; ConnectionError if it cannot be reached."""

    def recv(self, timeout: float, poll: float = 0.0) -> tuple[bytes, list] | None:
        """The next (peer, frames), or None after `timeout` seconds; the first `poll` of them
        (at most) spent looking without sleeping, the core yielded between looks."""

    def local(self, peer: bytes) -> bool:
        """Whether `peer` is on this machine and can map the files `share` makes."""

    def share(self, prefix: str, nbytes: int) -> SharedFile | None:
        """A new shared file for the local peers (memory.py); None where there are none."""

    @property
    def lane(self) -> str | None:
        """The socket local peers connect their lanes to (lane.py); None where there is none."""

    def claim(self, peer: bytes, token: str) -> bool:
        """From now on, `peer`'s messages take the lane that sent `token`; False if none did."""

    def forget(self, peer: bytes) -> None:
        """`peer` is no longer a worker of this job: close its lane, if it has one."""

    def close(self, linger: float = 0.0) -> None:
        """Let queued messages out for up to `linger` seconds, then release everything."""


class Handler(Protocol):
    """An in-process worker as LocalTransport drives it (distributed.worker.Worker)."""

    rank: int

    def hello(self) -> list: ...

    def handle(self, msg: Message) -> list[list]: ...


def _nbytes(frames: Sequence[Any]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


class ZmqServerTransport:
    """The server's ROUTER sockets; peers are ZeroMQ routing ids, one per worker connection.

    On tcp://, CURVE encrypts every connection, and a ZAP handler admits only clients holding the
    job's worker key: a peer without it never completes the handshake, so nothing it sends
    arrives. With `ipc_dir`, a second ROUTER listens on a Unix socket in that folder, which must
    be private to this user (mode 0700): only this user's processes on this machine can reach
    it, the same trust as the key files, so workers started here skip the encryption. The files
    that the server shares with them (`share`, memory.py) lie in the same folder, and so does the
    socket of their lanes (lane.py): once a worker is ready, its messages take its lane.
    """

    parallel = True  # workers compute at the same time

    def __init__(
        self,
        keys: Keys,
        bind: str = "tcp://127.0.0.1:*",
        max_message_bytes: int = -1,
        io_threads: int = 1,
        ipc_dir: str | None = None,
    ) -> None:
        # CURVE encrypts on the I/O threads, one connection each: more threads, more in parallel
        self.context = zmq.Context(io_threads=io_threads)
        self.auth = allow_only(self.context, keys.peer_public)
        self.sockets: list[zmq.Socket] = []
        self.local_endpoint = ""
        self.ipc_dir = ipc_dir
        self.shared: list[SharedFile] = []  # removed at close
        self.lanes: Lanes | None = None
        try:
            tcp = self._router(max_message_bytes + CURVE_OVERHEAD if max_message_bytes >= 0 else -1)
            # larger frames drop the peer; the limit applies to the encrypted frame, a little longer
            tcp.curve_secretkey = keys.secret
            tcp.curve_publickey = keys.public
            tcp.curve_server = True
            self.endpoint = self._bind(tcp, bind)
            if ipc_dir is not None:
                info = os.lstat(ipc_dir)
                if info.st_mode & 0o077 or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                    raise OSError(
                        f"{ipc_dir} must be a folder of this user's that only it can open (mode 0700)"
                    )
                self.local_endpoint = self._bind(self._router(max_message_bytes), f"ipc://{ipc_dir}/server")
                try:
                    self.lanes = Lanes(ipc_dir)
                except OSError as e:  # no SOCK_SEQPACKET: everything over ZeroMQ
                    log.warning("server: no lanes for the workers on this machine (%s)", e)
        except (zmq.ZMQError, OSError):
            self.close()
            raise
        self.poller = zmq.Poller()
        for socket in self.sockets:
            self.poller.register(socket, zmq.POLLIN)
        self.sent_bytes = self.received_bytes = 0

    def _router(self, max_message_bytes: int) -> zmq.Socket:
        socket = self.context.socket(zmq.ROUTER)
        self.sockets.append(socket)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished peer is an error
        socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        return socket

    @staticmethod
    def _bind(socket: zmq.Socket, endpoint: str) -> str:
        try:
            socket.bind(endpoint)  # port * lets the OS pick a free one
        except zmq.ZMQError as e:
            raise OSError(f"cannot bind {endpoint}: {e}") from None
        return socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, peer: bytes, frames: Sequence[Any]) -> None:
        # copy=False: zmq reads the arrays in place. The server writes a parameter array only two
        # versions later (it keeps two, server._reduce), after every live worker has answered the
        # step in between, i.e. after these frames have been delivered. (A worker dropped as
        # stuck may still have messages queued; what it reads no longer counts.)
        # A peer is its socket's index, then the routing id that socket gave the connection.
        if self.lanes is not None and self.lanes.send(peer, frames):
            self.sent_bytes += _nbytes(frames)
            return
        try:
            self.sockets[peer[0]].send_multipart([peer[1:], *frames], copy=False, flags=zmq.NOBLOCK)
        except (zmq.ZMQError, IndexError) as e:
            raise ConnectionError(f"cannot send to peer {peer.hex()}: {e}") from None
        self.sent_bytes += _nbytes(frames)

    def recv(self, timeout: float, poll: float = 0.0) -> tuple[bytes, list] | None:
        end = time.perf_counter() + timeout
        if poll > 0.0:
            polled = time.perf_counter() + min(poll, timeout)
            while time.perf_counter() < polled:
                got = self._take(dict(self.poller.poll(0)))
                if got is not None:
                    return got
                os.sched_yield()  # a worker that waits on this core may have its PARAMS
        return self._take(dict(self.poller.poll(int(max(0.0, end - time.perf_counter()) * 1000))))

    def _take(self, ready: dict) -> tuple[bytes, list] | None:
        for fd in self.lanes.fds() if self.lanes is not None else ():
            if ready.get(fd):
                peer, packet = self.lanes.receive(fd)
                if packet is None:  # the worker closed it: it is gone
                    self.poller.unregister(fd)
                elif packet:
                    self.received_bytes += len(packet)
                    return peer, [packet]
        for index, socket in enumerate(self.sockets):
            if ready.get(socket):
                peer, *frames = socket.recv_multipart(copy=False)
                self.received_bytes += _nbytes(frames)
                return bytes([index]) + peer.bytes, frames
        return None

    def local(self, peer: bytes) -> bool:
        # the Unix socket, when there is one, is the last socket: a peer starts with its index
        return bool(self.local_endpoint) and peer[0] == len(self.sockets) - 1

    def share(self, prefix: str, nbytes: int) -> SharedFile | None:
        if not self.local_endpoint:
            return None
        shared = memory.create(self.ipc_dir, prefix, nbytes)
        self.shared.append(shared)
        return shared

    @property
    def lane(self) -> str | None:
        return None if self.lanes is None else self.lanes.path

    def claim(self, peer: bytes, token: str) -> bool:
        self.forget(peer)  # a lane it had before, out of the poll before it closes
        connection = None if self.lanes is None else self.lanes.claim(peer, token)
        if connection is not None:
            self.poller.register(connection.fileno(), zmq.POLLIN)
        return connection is not None

    def forget(self, peer: bytes) -> None:
        if self.lanes is not None and peer in self.lanes.by_peer:
            self.poller.unregister(self.lanes.by_peer[peer].fileno())
            self.lanes.drop(peer)

    @property
    def closed(self) -> bool:
        return all(socket.closed for socket in self.sockets)

    def close(self, linger: float = 0.0) -> None:
        """Close the sockets (messages still queued are sent for up to `linger` seconds) and
        remove the shared files."""
        for socket in self.sockets:
            socket.close(linger=int(linger * 1000))
        if self.lanes is not None:  # what went on a lane is in its worker's socket buffer already
            self.lanes.close()
        self.auth.stop()
        self.context.term()
        self.remove_files()

    def remove_files(self, folder: bool = False) -> None:
        """Remove the shared files (whoever maps one keeps it until it lets go); with `folder`,
        the Unix socket and its folder too, left to nobody when the launcher that made it is gone."""
        for shared in self.shared:
            shared.unlink()
        if self.lanes is not None:
            self.lanes.remove()
        if folder and self.ipc_dir is not None:  # the socket, then the folder if nothing else is in it
            for remove, path in ((os.unlink, os.path.join(self.ipc_dir, "server")), (os.rmdir, self.ipc_dir)):
                try:
                    remove(path)
                except OSError:
                    pass


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
        for reply in self.workers[peer].handle(protocol.decode(frames)):  # a GRADS per bucket
            self._deliver_reply(peer, reply)

    def recv(self, timeout: float, poll: float = 0.0) -> tuple[bytes, list] | None:
        # nothing queued means nothing will come: there is nobody else to send it
        return self.inbox.popleft() if self.inbox else None

    def local(self, peer: bytes) -> bool:
        return False  # frames are copied, as a socket to another machine would

    def share(self, prefix: str, nbytes: int) -> SharedFile | None:
        return None

    lane = None

    def claim(self, peer: bytes, token: str) -> bool:
        return False

    def forget(self, peer: bytes) -> None:
        pass

    def close(self, linger: float = 0.0) -> None:
        self.inbox.clear()
