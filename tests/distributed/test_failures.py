"""What a worker process does when the server is gone, and who gets through the CURVE door."""

from __future__ import annotations

import time

import zmq

from distributed import keys, protocol
from distributed.config import JobConfig
from distributed.server import ParameterServer
from distributed.worker import EXIT_SERVER_SILENT
from numpy_cnn.data import load


def test_workers_notice_a_dead_server_within_the_timeout(mnist_dir, spawn_workers, server_transport):
    data = load("mnist", str(mnist_dir))
    config = JobConfig("fc-net", workers=2, timeout=1.0, data_dir=str(mnist_dir))
    transport = server_transport()
    server = ParameterServer(config, transport, data)
    workers = spawn_workers(transport.endpoint, 2)
    server.register()
    transport.close()  # the server's socket is gone, as when its process is killed: no more heartbeats
    gone = time.monotonic()
    for p in workers:
        assert p.wait(timeout=10) == EXIT_SERVER_SILENT
        assert time.monotonic() - gone < config.timeout + 2.0
        out = p.stdout.read().decode()
        assert "has not said anything for 1 s: it is gone or stuck" in out, out


def intruder(endpoint: str, curve: keys.Keys | None) -> bool:
    """Does a HELLO, then a gradient-shaped message, from a peer holding `curve` get through?"""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        sock.curve_secretkey, sock.curve_publickey = curve.secret, curve.public
        sock.curve_serverkey = curve.peer_public
    try:
        sock.connect(endpoint)
        sock.send_multipart(protocol.encode(protocol.HELLO, rank=0, pid=1))
        return bool(sock.poll(1000))
    finally:
        sock.close(linger=0)
        context.term()


def test_only_holders_of_the_worker_key_get_through(job_keys, server_transport, tmp_path):
    transport = server_transport()
    real = keys.read(job_keys, keys.WORKER)
    other = keys.read(keys.write(tmp_path / "other"), keys.WORKER)  # another job's keys
    strangers = {
        "no key (plain TCP)": None,
        "a client key the server does not know": keys.Keys(other.public, other.secret, real.peer_public),
        "the right client key, but the wrong server key": keys.Keys(
            real.public, real.secret, other.peer_public
        ),
    }
    for who, curve in strangers.items():
        assert not intruder(transport.endpoint, curve), who
        assert transport.recv(0.5) is None, f"{who}: a message reached the server"

    # the job's own worker key does get in: the HELLO arrives (and the door is not simply shut)
    assert not intruder(transport.endpoint, real)  # nobody answers here: this test is the server
    got = transport.recv(5.0)
    assert got is not None
    assert protocol.decode(got[1]).type == protocol.HELLO
