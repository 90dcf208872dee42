"""A worker's connection to its server: one DEALER socket (CURVE over tcp://), a monitor that says
when it drops, and, once the worker is ready, its lane (lane.py). Talk (talk.py) opens a fresh
Link each time the worker says HELLO to a server again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .keys import Keys
from .lane import Lane


class Link:
    """One DEALER socket to the server (CURVE over tcp://), a monitor that says when it drops,
    and, once the worker is ready, its lane, if WELCOME offered one (lane.py): then every message
    takes the lane, both ways.

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
        self.lane: Lane | None = None
        self.lane_ended = False  # the server closed the lane: it is gone (or has dropped this worker)
        self.poller = zmq.Poller()  # the socket, and the lane once there is one: what `poll` watches
        self.poller.register(self.socket, zmq.POLLIN)
        try:
            self.socket.connect(endpoint)
        except zmq.ZMQError:
            self.close()  # else the context could never be terminated
            raise

    def sources(self) -> list:
        """What brings the server's messages, for a poller: the socket, and the lane till it ends."""
        return [self.socket] if self.lane is None or self.lane_ended else [self.socket, self.lane.fileno()]

    def adopt(self, lane: Lane) -> None:
        """The worker is ready, its READY sent: the lane carries everything from now on."""
        self.lane = lane
        self.poller.register(lane.fileno(), zmq.POLLIN)

    def poll(self, timeout_ms: int) -> bool:
        """Whether a message is waiting, after up to `timeout_ms`."""
        return bool(self.poller.poll(timeout_ms))

    def send(self, frames: Sequence[Any]) -> None:
        if self.lane is not None:
            self.lane.send(frames)
        else:
            self.socket.send_multipart(frames, copy=False)

    def receive(self) -> list | None:
        """The next message's frames, the lane's first; None if nothing is waiting."""
        if self.lane is not None:
            packet = self.lane.receive()
            if packet:
                return [packet]
            if packet is None and not self.lane_ended:  # closed: out of the poll (it stays readable)
                self.lane_ended = True
                self.poller.unregister(self.lane.fileno())
        try:
            return self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None

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
        if self.lane is not None:
            self.lane.close()
