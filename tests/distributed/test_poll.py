"""The server polls for the rest of a step's gradients, from its first answer, while a core of its
machine is free of computing workers and each of its workers has one (config.server_poll,
ParameterServer._poll), over real sockets (ZmqServerTransport.recv)."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from numpy_cnn.data import load
from numpy_cnn.distributed import keys, protocol
from numpy_cnn.distributed.config import POLL_S, JobConfig, server_poll
from numpy_cnn.distributed.link import Link
from numpy_cnn.distributed.members import Member
from numpy_cnn.distributed.server import ParameterServer
from numpy_cnn.distributed.transport import LocalTransport
from numpy_cnn.distributed.worker import Worker


@pytest.fixture(scope="module")
def data(mnist_dir):
    return load("mnist", str(mnist_dir))


def test_the_server_polls_unless_told_no_process_polls(monkeypatch):
    monkeypatch.delenv("NUMPY_CNN_SPIN_US", raising=False)
    assert server_poll(True) == POLL_S and server_poll(False) == 0.0  # in-process: nothing to wait for
    monkeypatch.setenv("NUMPY_CNN_SPIN_US", "250")  # the workers' polling: the server's stays
    assert server_poll(True) == POLL_S
    monkeypatch.setenv("NUMPY_CNN_SPIN_US", "0")
    assert server_poll(True) == 0.0
    monkeypatch.setenv("NUMPY_CNN_SPIN_US", "soon")
    with pytest.raises(ValueError, match="NUMPY_CNN_SPIN_US"):
        server_poll(True)


def test_the_server_polls_from_a_steps_first_answer_while_a_core_is_free(data):
    config = JobConfig("fc-net", workers=3, shards=6)
    server = ParameterServer(config, LocalTransport([Worker(r, data) for r in range(3)]), data)
    server.poll_s, server.cores = 0.005, 2
    for rank, boot in enumerate([server.boot, server.boot, "another machine"]):
        server.members[rank] = Member(rank, bytes([rank]), 100 + rank, heard=0.0, boot=boot)
    server.ledger.start(64, {0: [(0, 2)], 1: [(2, 4)], 2: [(4, 6)]})
    assert server._poll(10.0) == 0.0  # no job has ended: everyone computes
    server.ledger.first_done = 10.0
    # workers 0 and 1 compute on this machine's two cores (worker 2 is elsewhere): sleep
    assert server._poll(10.001) == 0.0
    server.ledger.release(range(len(server.buckets)), [(0, 2)])  # worker 0 is done
    assert server.ledger.computing() == {1, 2}
    assert server._poll(10.001) == pytest.approx(0.004)  # one core is free: poll the rest of 5 ms
    assert server._poll(10.006) == 0.0  # past it: sleep
    server.members[2].boot = server.boot  # all three on this machine's two cores: never poll,
    assert server._poll(10.001) == 0.0  # for a polling server would take a computing worker's core
    server.ledger.release(range(len(server.buckets)), [(2, 4)])  # (even with one left computing)
    assert server.ledger.computing() == {2} and server._poll(10.001) == 0.0


@pytest.fixture
def link(job_keys, server_transport):
    """A server's transport and a worker's Link to it over CURVE TCP on loopback."""
    transport = server_transport()
    context = zmq.Context()
    made = Link(context, transport.endpoint, keys.read(job_keys, keys.WORKER), 5.0)
    yield transport, made
    made.close()
    context.term()


def test_a_polling_transport_takes_a_message_at_once_and_sleeps_once_the_poll_is_over(link):
    transport, worker = link
    hello = protocol.encode(protocol.HELLO, rank=0, pid=1, boot="")
    worker.send(hello)
    assert transport.recv(5.0) is not None  # connected and through
    # nothing comes: it looks for 0.4 s on the CPU, then sleeps out the rest of the timeout
    began, cpu = time.monotonic(), time.thread_time()
    assert transport.recv(0.6, poll=0.4) is None
    assert 0.55 <= time.monotonic() - began < 0.9 and 0.01 <= time.thread_time() - cpu < 0.5
    began, cpu = time.monotonic(), time.thread_time()
    assert transport.recv(0.3) is None and time.thread_time() - cpu < 0.02  # no poll: asleep
    # a message that comes while it polls is taken as it comes, not after the poll
    sender = threading.Timer(0.05, worker.send, [hello])
    sender.start()
    began = time.monotonic()
    got = transport.recv(5.0, poll=3.0)
    sender.join()
    assert got is not None and protocol.decode(got[1]).type == protocol.HELLO
    assert time.monotonic() - began < 2.0
