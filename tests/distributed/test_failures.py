"""What a worker process does when the server is gone, and who gets through the CURVE door."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import msgpack
import pytest
import zmq
from threadpoolctl import threadpool_limits

from numpy_cnn.data import load
from numpy_cnn.distributed import keys, protocol
from numpy_cnn.distributed.config import JobConfig
from numpy_cnn.distributed.inprocess import in_process_server
from numpy_cnn.distributed.server import ParameterServer
from numpy_cnn.distributed.stats import EpochStats
from numpy_cnn.distributed.worker import EXIT_REFUSED, EXIT_SERVER_SILENT, Worker, serve


@pytest.mark.parametrize("local", [False, True], ids=["tcp", "ipc"])
def test_workers_notice_a_dead_server_within_the_timeout(
    mnist_dir, spawn_workers, server_transport, tmp_path, local
):
    data = load("mnist", str(mnist_dir))
    config = JobConfig("fc-net", workers=2, timeout=1.0, data_dir=str(mnist_dir))
    private = tmp_path / "ipc"
    private.mkdir(mode=0o700)
    transport = server_transport(**({"ipc_dir": str(private)} if local else {}))
    server = ParameterServer(config, transport, data)
    workers = spawn_workers(transport.local_endpoint if local else transport.endpoint, 2)
    server.register()
    transport.close()  # the server's socket is gone, as when its process is killed: no more heartbeats
    gone = time.monotonic()
    for p in workers:
        assert p.wait(timeout=10) == EXIT_SERVER_SILENT
        assert time.monotonic() - gone < config.timeout + 2.0
        out = p.stdout.read().decode()
        assert "has not said anything for 1 s: it is gone or stuck" in out, out


@pytest.mark.parametrize("local", [False, True], ids=["tcp", "ipc"])
def test_workers_rejoin_a_server_that_comes_back_at_the_same_address(
    mnist_dir, spawn_workers, server_transport, tmp_path, local
):
    """With --checkpoint-dir (the launcher can restart the server), a welcomed worker whose server
    is gone says HELLO again, on a fresh connection, and computes for whichever server welcomes it.
    Over ipc://, the workers map the server's memory and talk over lanes: both are new ones."""
    data = load("mnist", str(mnist_dir))
    config = JobConfig(
        "fc-net", workers=2, timeout=1.0, data_dir=str(mnist_dir), checkpoint_dir=str(tmp_path / "ck")
    )
    private = tmp_path / "ipc"
    private.mkdir(mode=0o700)
    where = {"ipc_dir": str(private)} if local else {}
    first = ParameterServer(config, server_transport(**where), data)
    workers = spawn_workers(first.transport.local_endpoint if local else first.transport.endpoint, 2)
    with threadpool_limits(1):  # as in every worker process: one BLAS thread, the same bits
        first.register()
        assert len(first.transport.lanes.by_peer if local else {}) == (2 if local else 0)
        first.train_step(0, 0, EpochStats())
        first.transport.close()  # gone without a word, as when its process is killed
        second = ParameterServer(config, server_transport(bind=first.transport.endpoint, **where), data)
        start = time.monotonic()
        second.register()  # the same two processes, welcomed again
        assert time.monotonic() - start < 10
        assert len(second.transport.lanes.by_peer if local else {}) == (2 if local else 0)
        second.train_step(0, 3, EpochStats())
        second.stop_workers(protocol.FINISHED)
        clean = in_process_server(config, data)
        clean.register()
        clean.train_step(0, 3, EpochStats())
    for a, b in zip(second.params, clean.params):
        assert a.data.tobytes() == b.data.tobytes()
    for p in workers:
        assert p.wait(timeout=10) == 0
        out = p.stdout.read().decode()
        assert "saying HELLO until a server welcomes it back" in out and "welcomed back" in out, out


def test_a_worker_gives_up_on_a_server_that_does_not_come_back(
    mnist_dir, spawn_workers, server_transport, tmp_path
):
    data = load("mnist", str(mnist_dir))
    config = JobConfig(
        "fc-net", workers=1, timeout=1.0, data_dir=str(mnist_dir), checkpoint_dir=str(tmp_path / "ck")
    )
    server = ParameterServer(config, server_transport(), data)
    (worker,) = spawn_workers(server.transport.endpoint, 1, join_timeout=2)
    server.register()
    server.transport.close()
    gone = time.monotonic()
    assert worker.wait(timeout=15) == EXIT_SERVER_SILENT
    assert time.monotonic() - gone < 2 + 2.0  # the connection drops at once; then --join-timeout
    out = worker.stdout.read().decode()
    assert "went away, and none welcomed this worker back within 2 s" in out, out


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
        sock.send_multipart(protocol.encode(protocol.HELLO, rank=0, pid=1, boot=""))
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


def test_a_step_with_no_worker_waits_for_one_then_gives_it_everything(
    mnist_dir, spawn_workers, server_transport
):
    data = load("mnist", str(mnist_dir))
    config = JobConfig("fc-net", workers=2, timeout=1.0, join_timeout=30.0, data_dir=str(mnist_dir))
    with threadpool_limits(1):  # as in every worker process: one BLAS thread, the same bits
        clean = in_process_server(config, data)
        clean.register()
        clean.train_step(0, 4, EpochStats())

    server = ParameterServer(config, server_transport(), data)
    spawn_workers(server.transport.endpoint, 1, ranks=[1])  # only rank 1, and not yet registered
    server.train_step(0, 4, EpochStats())  # starts with nobody: rank 1 joins and takes all 4 shards
    server.stop_workers("test over")
    for a, b in zip(server.params, clean.params):
        assert a.data.tobytes() == b.data.tobytes()


def test_a_step_nobody_joins_for_ends_after_the_join_timeout(mnist_dir, server_transport):
    data = load("mnist", str(mnist_dir))
    config = JobConfig("fc-net", workers=2, timeout=0.5, join_timeout=1.0, data_dir=str(mnist_dir))
    server = ParameterServer(config, server_transport(), data)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="no worker has been ready to compute it for 1 s"):
        server.train_step(0, 0, EpochStats())
    assert time.monotonic() - start < 3.0


def test_a_worker_whose_answers_are_rejected_is_dropped_and_its_work_redone(
    mnist_dir, spawn_workers, server_transport, job_keys
):
    """Rank 1 (a thread here) sends wrong sample counts from step 2 on: the server rejects them,
    sees from its heartbeat that it has answered everything, drops it, and rank 0 does its work."""
    data = load("mnist", str(mnist_dir))
    config = JobConfig("fc-net", workers=2, max_steps=5, timeout=1.0, data_dir=str(mnist_dir))

    class Miscounts(Worker):
        def _step(self, msg, send):
            def miscount(frames):
                if msg["step"] >= 2:
                    header = msgpack.unpackb(frames[0])
                    header["counts"] = [c + 1 for c in header["counts"]]
                    frames[0] = msgpack.packb(header)
                send(frames)

            super()._step(msg, miscount)

    server = ParameterServer(config, server_transport(), data)
    spawn_workers(server.transport.endpoint, 1, ranks=[0])
    bad = threading.Thread(
        target=serve,
        args=(Miscounts(1, data), server.transport.endpoint, keys.read(job_keys, keys.WORKER), 30.0),
        daemon=True,
    )
    with threadpool_limits(1):  # as in every worker process: one BLAS thread, the same bits
        bad.start()
        server.run()
        bad.join(timeout=10)
        assert not bad.is_alive()  # the server told it to stop when it dropped it
        assert server.lost == 1 and server.rejected >= 1

        clean = in_process_server(config, data)
        clean.run()
    for a, b in zip(server.params, clean.params):
        assert a.data.tobytes() == b.data.tobytes()


def test_a_worker_lost_after_its_first_bucket_has_the_rest_redone_with_the_steps_old_parameters(
    mnist_dir, spawn_workers, server_transport, job_keys, caplog
):
    """Rank 1 (a thread here) sends bucket 0 of step 2, then hangs. The server has updated bucket 0
    by the time it drops rank 1, so rank 0 computes only buckets 1 and 2 of rank 1's nodes, with
    the parameters the step started from (the spare buffers, updates.py): a clean run's weights."""
    data = load("mnist", str(mnist_dir))
    config = JobConfig("fc-net", workers=2, max_steps=5, timeout=1.0, data_dir=str(mnist_dir))
    release = threading.Event()

    class Hangs(Worker):
        def _step(self, msg, send):
            def first_bucket_only(frames):
                send(frames)
                if msg["step"] == 2:
                    release.wait(60)  # stuck: no more buckets, no heartbeats

            super()._step(msg, first_bucket_only)

    server = ParameterServer(config, server_transport(), data)
    spawn_workers(server.transport.endpoint, 1, ranks=[0])
    hangs = threading.Thread(
        target=serve,
        args=(Hangs(1, data), server.transport.endpoint, keys.read(job_keys, keys.WORKER), 30.0),
        daemon=True,
    )
    try:
        with threadpool_limits(1), caplog.at_level(logging.INFO, logger="numpy_cnn.distributed.server"):
            hangs.start()
            server.run()
            clean = in_process_server(config, data)
            clean.run()
    finally:
        release.set()
    hangs.join(timeout=10)
    assert not hangs.is_alive()  # the server told it to stop when it dropped it
    assert server.lost == 1
    assert "step 2: worker 0 takes over buckets [1, 2] of micro-shards [(2, 4)]" in caplog.text
    for a, b in zip(server.params, clean.params):
        assert a.data.tobytes() == b.data.tobytes()


def test_local_workers_reach_the_server_over_a_private_unix_socket(job_keys, tmp_path, server_transport):
    private = tmp_path / "ipc"
    private.mkdir(mode=0o700)
    transport = server_transport(ipc_dir=str(private))
    assert transport.local_endpoint == f"ipc://{private}/server" and transport.endpoint.startswith("tcp://")
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)  # no CURVE keys at all: the folder's mode is the protection
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(transport.local_endpoint)
        sock.send_multipart(protocol.encode(protocol.HELLO, rank=0, pid=1, boot=""))
        peer, frames = transport.recv(5.0)
        assert protocol.decode(frames).type == protocol.HELLO
        transport.send(peer, protocol.encode(protocol.STOP, reason="test"))
        assert sock.poll(5000) and protocol.decode(sock.recv_multipart()).type == protocol.STOP
    finally:
        sock.close()
        context.term()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(OSError, match="that only it can open"):
        server_transport(ipc_dir=str(shared))


DIFFERENT_MODEL = """
import sys
import numpy_cnn.models as models
from numpy_cnn import layers
from numpy_cnn.net import Net

# this machine's fc-net has a narrower hidden layer than the server's
models.MODELS["fc-net"] = lambda rng: Net([layers.Linear(784, 300, rng=rng), layers.ReLU(),
                                          layers.Linear(300, 100, rng=rng), layers.ReLU(),
                                          layers.Linear(100, 10, rng=rng)])
from numpy_cnn.launch.roles import worker_main
sys.exit(worker_main(sys.argv[1:]))
"""


def test_a_worker_with_another_model_definition_is_refused_on_both_sides(
    mnist_dir, server_transport, job_keys, caplog
):
    data = load("mnist", str(mnist_dir))
    config = JobConfig("fc-net", workers=1, timeout=1.0, join_timeout=5.0, data_dir=str(mnist_dir))
    transport = server_transport()
    server = ParameterServer(config, transport, data)
    argv = ["--connect", transport.endpoint, "--rank", "0", "--keys", str(job_keys), "--join-timeout", "20"]
    worker = subprocess.Popen(
        [sys.executable, "-c", DIFFERENT_MODEL, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(TimeoutError, match="only workers"):
            server.register()
        out, _ = worker.communicate(timeout=20)
    finally:
        worker.kill()
        worker.wait(timeout=10)
    assert worker.returncode == EXIT_REFUSED  # the launcher does not restart it: it would refuse again
    difference = "net.layers[0] is Linear(784, 400) on the server, Linear(784, 300) on this worker"
    assert f"worker 0: error: model fc-net differs: {difference}" in out, out
    assert f"worker 0 refused the job: model fc-net differs: {difference}" in caplog.text
