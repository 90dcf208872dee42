"""A lane: a Unix socket between the server and one worker on its machine, which each side's own
thread writes and reads, with no ZeroMQ I/O thread in between.

Over ipc:// (transport.py) a ZeroMQ message crosses four threads: the sender's, its context's
I/O thread, the receiver's I/O thread, and the receiver's. Each hand-over is a wake-up, and on a
machine whose cores the workers fill, a woken I/O thread waits behind the computation on its
core. A worker that maps the server's memory (memory.py) sends and gets only headers, so its
messages go over a lane instead: one SOCK_SEQPACKET connection, one packet per message, in order,
written with one send() and read with one recv().

WELCOME offers the lane (its `memory` names the socket). The worker connects and sends a random
token as its first packet, then READY names the token over ZeroMQ, and the server claims the
connection that sent it. From then on every message between the two takes the lane both ways;
only what came before READY (HELLO, WELCOME) takes ZeroMQ. The socket lies in the job's private
folder (mode 0700), so only this user's processes reach it, the trust the ipc:// socket beside
it has. Where the system has no SOCK_SEQPACKET Unix sockets, no lane is offered.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import socket
from collections.abc import Sequence
from typing import Any

from .protocol import MAX_HEADER_BYTES

log = logging.getLogger("numpy_cnn.distributed.lane")

NAME = "lane"  # the listening socket, in the server's private folder
TOKEN_BYTES = 16
MAX_UNCLAIMED = 256  # connections whose READY has not come: a flood of them drops the oldest
PACKET_BYTES = MAX_HEADER_BYTES + 1  # a longer packet would be cut off: one byte more shows it


def _receive(connection: socket.socket) -> bytes | None:
    """The next packet on a non-blocking connection: b"" if none is waiting, None at its end.

    A Unix socket closed with packets still unread makes the other side's next recv fail with
    ECONNRESET, before the packets sent to it earlier are read: those still come, then the end."""
    for _ in range(2):
        try:
            return connection.recv(PACKET_BYTES) or None
        except (BlockingIOError, InterruptedError):
            return b""
        except ConnectionResetError:
            continue  # reported once; what was sent before the reset is still there
        except OSError:
            return None
    return None


def _packet(frames: Sequence[Any]) -> Any:
    """The one frame a lane carries (a header: a worker that maps the memory sends no arrays)."""
    if len(frames) != 1:
        raise ValueError(f"a lane carries headers only, not {len(frames) - 1} arrays")
    return frames[0]


class Lanes:
    """The server's side: the listening socket, and the connections it has claimed, by peer (the
    ZeroMQ peer of the worker that READY came from)."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, NAME)
        try:  # a server before this one, on the same folder (the launcher restarted it)
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.listener.bind(self.path)
            self.listener.listen(128)
            self.listener.setblocking(False)
        except OSError:
            self.listener.close()
            raise
        self.unclaimed: dict[bytes, socket.socket] = {}  # token -> connection
        self.accepted: list[socket.socket] = []  # its token not read yet
        self.by_peer: dict[bytes, socket.socket] = {}
        self.peer_of: dict[int, bytes] = {}  # a claimed connection's fd -> its peer

    def claim(self, peer: bytes, token: str) -> socket.socket | None:
        """The connection whose first packet was `token` (hex) now carries `peer`'s messages;
        None if no such connection came (the worker connected before it sent READY)."""
        self._accept()
        connection = self.unclaimed.pop(bytes.fromhex(token), None) if _is_token(token) else None
        while len(self.accepted) > MAX_UNCLAIMED:  # bounded, the newest kept
            self.accepted.pop(0).close()
        while len(self.unclaimed) > MAX_UNCLAIMED:
            self.unclaimed.pop(next(iter(self.unclaimed))).close()
        if connection is not None:
            self.drop(peer)
            self.by_peer[peer] = connection
            self.peer_of[connection.fileno()] = peer
        return connection

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            connection.setblocking(False)
            self.accepted.append(connection)
        for connection in list(self.accepted):
            token = _receive(connection)
            if token == b"":
                continue  # not sent yet
            self.accepted.remove(connection)
            if token is None or len(token) != TOKEN_BYTES or token in self.unclaimed:
                connection.close()
                continue
            self.unclaimed[token] = connection

    def send(self, peer: bytes, frames: Sequence[Any]) -> bool:
        """Send on `peer`'s lane; False if it has none. ConnectionError if the packet cannot go
        (the worker is gone, or has not read a full socket buffer of them: stuck)."""
        connection = self.by_peer.get(peer)
        if connection is None:
            return False
        try:
            connection.send(_packet(frames))
        except OSError as e:
            raise ConnectionError(f"cannot send to peer {peer.hex()} on its lane: {e}") from None
        return True

    def receive(self, fd: int) -> tuple[bytes, bytes | None]:
        """The peer of the lane on `fd` and the packet waiting on it; None when the worker has
        closed it (the lane is dropped)."""
        peer = self.peer_of[fd]
        packet = _receive(self.by_peer[peer])
        if packet is None:
            self.drop(peer)
        return peer, packet

    def fds(self) -> list[int]:
        return list(self.peer_of)

    def drop(self, peer: bytes) -> None:
        """Close `peer`'s lane, if it has one (the worker reads what was sent, then the end)."""
        connection = self.by_peer.pop(peer, None)
        if connection is not None:
            del self.peer_of[connection.fileno()]
            connection.close()

    def close(self) -> None:
        for connection in [*self.by_peer.values(), *self.unclaimed.values(), *self.accepted]:
            connection.close()
        self.by_peer, self.peer_of, self.unclaimed, self.accepted = {}, {}, {}, []
        self.listener.close()

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _is_token(token: Any) -> bool:
    hex_digits = set("0123456789abcdef")
    return isinstance(token, str) and len(token) == 2 * TOKEN_BYTES and set(token) <= hex_digits


class Lane:
    """The worker's side: its connection, and the token READY names."""

    def __init__(self, path: str, send_timeout: float) -> None:
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self.send_timeout = send_timeout
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.socket.settimeout(send_timeout)
            self.socket.connect(path)
            self.socket.send(self.token)
            self.socket.setblocking(False)  # receive() only reads what is there; send() waits itself
        except OSError:
            self.socket.close()
            raise
        self.ended = False  # the server closed it

    def fileno(self) -> int:
        return self.socket.fileno()

    def send(self, frames: Sequence[Any]) -> None:
        """Send one message; lost if the server has closed the lane (it is gone, or has dropped
        this worker: a message to a server that went away is lost over ZeroMQ too);
        ConnectionError if it has not taken it within the send timeout (it is stuck)."""
        packet = _packet(frames)
        try:
            try:
                self.socket.send(packet)
            except BlockingIOError:
                if not select.select([], [self.socket], [], self.send_timeout)[1]:
                    raise TimeoutError(f"the server took nothing for {self.send_timeout:g} s") from None
                self.socket.send(packet)
        except (BrokenPipeError, ConnectionResetError):
            pass  # receive() then finds the end
        except OSError as e:
            raise ConnectionError(f"cannot send to the server on the lane: {e}") from None

    def receive(self) -> bytes | None:
        """The next packet, if one is waiting (b"" if none); None once the server has closed it."""
        if self.ended:
            return None
        packet = _receive(self.socket)
        self.ended = packet is None
        return packet

    def close(self) -> None:
        self.socket.close()
