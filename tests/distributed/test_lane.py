"""Lanes: the Unix sockets between the server and its local workers (distributed/lane.py)."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from numpy_cnn.distributed import lane, protocol
from numpy_cnn.distributed.lane import Lane, Lanes

PEER = b"\x01worker-0"
GRADS = dict(step=0, version=0, bucket=0, rank=0, nodes=[[0, 2]], counts=[32], loss=1.0, correct=1)
GRADS.update(compute_s=0.001, started=1.0, taken=[0.0], prepared=[], shared=True)


@pytest.fixture
def lanes(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir(mode=0o700)
    made = Lanes(str(folder))
    yield made
    made.close()
    made.remove()


def claimed(lanes: Lanes, timeout: float = 5.0) -> tuple[Lane, int]:
    """A worker's lane, connected and claimed for PEER; and its fd on the server's side."""
    worker = Lane(lanes.path, timeout)
    assert lanes.claim(PEER, worker.token.hex()) is not None
    (fd,) = lanes.fds()
    return worker, fd


def wait_readable(fd, timeout: float = 5.0) -> None:
    import select

    assert select.select([fd], [], [], timeout)[0], "nothing arrived"


def test_a_claimed_lane_carries_messages_both_ways_in_order(lanes):
    worker, fd = claimed(lanes)
    try:
        for i in range(50):
            worker.send(protocol.encode(protocol.HEARTBEAT, rank=0, answered=i))
        got = []
        for _ in range(50):
            wait_readable(fd)
            peer, packet = lanes.receive(fd)
            assert peer == PEER
            got.append(protocol.decode([packet])["answered"])
        assert got == list(range(50))
        for i in range(50):
            assert lanes.send(PEER, protocol.encode(protocol.UPDATE, step=i, version=i + 1, bucket=0, side=1))
        steps = []
        while len(steps) < 50:
            wait_readable(worker)
            steps.append(protocol.decode([worker.receive()])["step"])
        assert steps == list(range(50))
        assert worker.receive() == b""  # nothing waiting: no wait either
        assert lanes.send(b"\x01someone-else", [b"x"]) is False  # no lane: the caller uses ZeroMQ
    finally:
        worker.close()


def test_only_the_connection_that_sent_the_token_is_claimed(lanes):
    first, second = Lane(lanes.path, 5.0), Lane(lanes.path, 5.0)
    try:
        assert lanes.claim(PEER, "00" * lane.TOKEN_BYTES) is None  # nobody sent that one
        assert lanes.claim(PEER, "not hex") is None
        assert lanes.claim(PEER, second.token.hex()) is not None
        assert lanes.claim(b"\x01other", second.token.hex()) is None  # claimed once only
        second.send(protocol.encode(protocol.HEARTBEAT, rank=0, answered=7))
        first.send(protocol.encode(protocol.HEARTBEAT, rank=0, answered=1))  # unclaimed: never read
        (fd,) = lanes.fds()
        wait_readable(fd)
        assert protocol.decode([lanes.receive(fd)[1]])["answered"] == 7
    finally:
        first.close()
        second.close()


def test_a_flood_of_unclaimed_connections_is_bounded(lanes):
    flood = []
    try:
        for _ in range(lane.MAX_UNCLAIMED + 20):
            flood.append(Lane(lanes.path, 5.0))
            if len(flood) % 100 == 0:  # the listen queue holds 128: a claim (of nothing) takes them
                assert lanes.claim(b"\x01nobody", "00" * lane.TOKEN_BYTES) is None
        worker, _ = claimed(lanes)  # reads all their tokens on the way, keeps the newest only
        assert len(lanes.unclaimed) == lane.MAX_UNCLAIMED
        assert lanes.claim(b"\x01late", flood[-1].token.hex()) is not None
        assert lanes.claim(b"\x01early", flood[0].token.hex()) is None  # dropped: closed
        wait_readable(flood[0])
        assert flood[0].receive() is None
        worker.close()
    finally:
        for f in flood:
            f.close()


def test_a_lane_carries_headers_only(lanes):
    worker, _ = claimed(lanes)
    try:
        grads = protocol.encode(
            protocol.UPDATE, [np.zeros(3, np.float32)], step=0, version=1, bucket=0, side=-1
        )
        with pytest.raises(ValueError, match="headers only"):
            worker.send(grads)
        with pytest.raises(ValueError, match="headers only"):
            lanes.send(PEER, grads)
    finally:
        worker.close()


@pytest.mark.parametrize("unread", [False, True], ids=["all-read", "unread-left"])
def test_each_side_reads_what_came_before_the_other_closed_it(lanes, unread):
    """Closing a Unix socket with packets unread makes the other side's next recv fail with
    ECONNRESET before it reads what was sent to it: that must still be read, then the end."""
    heartbeat = protocol.encode(protocol.HEARTBEAT, rank=0, answered=0)
    worker, fd = claimed(lanes)
    if unread:
        worker.send(heartbeat)  # the server never reads it
    lanes.send(PEER, protocol.encode(protocol.STOP, reason="dropped"))
    lanes.drop(PEER)
    assert lanes.fds() == []
    wait_readable(worker)
    assert protocol.decode([worker.receive()]).type == protocol.STOP
    assert worker.receive() is None and worker.ended
    worker.send(heartbeat)  # to a server gone: lost
    worker.close()

    worker, fd = claimed(lanes)
    if unread:
        lanes.send(PEER, heartbeat)  # the worker never reads it
    worker.send(protocol.encode(protocol.GRADS, **GRADS))
    worker.close()  # the worker's process is gone
    wait_readable(fd)
    peer, packet = lanes.receive(fd)
    assert peer == PEER and protocol.decode([packet]).type == protocol.GRADS
    assert lanes.receive(fd) == (PEER, None)
    assert lanes.fds() == []


def test_a_stuck_reader_fails_the_send_instead_of_blocking_it(lanes):
    worker, fd = claimed(lanes, timeout=0.2)
    try:
        header = protocol.encode(protocol.HEARTBEAT, rank=0, answered=0)
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="took nothing for 0.2 s"):
            for _ in range(100_000):  # the server reads none: its socket buffer fills
                worker.send(header)
        assert time.monotonic() - started < 5
        with pytest.raises(ConnectionError, match="on its lane"):  # the server never waits
            for _ in range(100_000):
                lanes.send(PEER, header)
    finally:
        worker.close()


def test_a_lane_socket_left_by_an_earlier_server_is_replaced(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(folder / lane.NAME))  # a killed server's: bound, nobody listening
    stale.close()
    lanes = Lanes(str(folder))
    try:
        worker, _ = claimed(lanes)
        worker.close()
    finally:
        lanes.close()
        lanes.remove()
    assert not (folder / lane.NAME).exists()
