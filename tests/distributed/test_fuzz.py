"""A live server under a hail of malformed messages: it stays up and its weights do not change.

The server trains in this process with two real worker processes; meanwhile a fuzzer process
connects its own socket to the same port and sends thousands of messages of every malformed kind. The
final weights must be bitwise those of an undisturbed run.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from threadpoolctl import threadpool_limits

from numpy_cnn import buckets, checkpoint
from numpy_cnn.data import load
from numpy_cnn.distributed import keys, protocol
from numpy_cnn.distributed.config import JobConfig
from numpy_cnn.distributed.inprocess import in_process_server
from numpy_cnn.distributed.server import ParameterServer
from numpy_cnn.distributed.transport import LocalTransport
from numpy_cnn.distributed.worker import Worker
from numpy_cnn.models import build

GRADS_FIELDS = dict(step=1, version=1, bucket=0, rank=0, nodes=[[0, 2]], counts=[32], loss=1.0, correct=1)
GRADS_FIELDS.update(compute_s=0.001, started=1.0, taken=[0.0], prepared=[], shared=True)


def malformed(rng: np.random.Generator, params: list[np.ndarray], step: int) -> list[bytes]:
    """One hostile message, of a kind picked at random."""
    kind = rng.integers(16) if rng.random() < 0.01 else rng.integers(15)  # 15 (oversized) drops the link
    grads = [p.astype(p.dtype) for p in params]
    fields = {
        "step": step,
        "version": step,
        "bucket": int(rng.integers(-1, 4)),
        "rank": 0,
        "nodes": [[0, 2]],
        "counts": [32],
        "loss": 1.0,
        "correct": 1,
        "compute_s": 0.001,
        "started": 1.0,
        "taken": [0.0, 0.0, 0.0],
        "prepared": [],
        "shared": bool(rng.integers(2)),  # in a gradient file this peer was never given
    }
    if kind == 0:  # random bytes, 1 to 4 frames
        return [rng.bytes(int(rng.integers(0, 200))) for _ in range(rng.integers(1, 5))]
    if kind == 1:  # valid msgpack, not a map
        return [msgpack.packb([1, "grads", None])]
    if kind == 2:  # wrong protocol version
        return [msgpack.packb({"v": protocol.VERSION - 1, "type": "grads", "arrays": [], **fields})]
    if kind == 3:  # unknown type
        return [msgpack.packb({"v": protocol.VERSION, "type": "shutdown", "arrays": []})]
    if kind == 4:  # a well-formed gradient from a peer that never registered (stale, current, future)
        fields["step"] = fields["version"] = step + int(rng.integers(-2, 3))
        return protocol.encode(protocol.GRADS, grads, **fields)
    if kind == 5:  # NaN and Inf gradients
        bad = [g.copy() for g in grads]
        bad[0].flat[0], bad[-1].flat[-1] = np.nan, np.inf
        return protocol.encode(protocol.GRADS, bad, **fields)
    if kind == 6:  # wrong dtype
        return protocol.encode(protocol.GRADS, [g.astype(np.float64) for g in grads], **fields)
    if kind == 7:  # wrong shapes
        return protocol.encode(protocol.GRADS, [g.reshape(-1) for g in grads], **fields)
    if kind == 8:  # truncated frames
        frames = protocol.encode(protocol.GRADS, grads, **fields)
        return [frames[0], *(bytes(memoryview(f).cast("B"))[: memoryview(f).nbytes // 2] for f in frames[1:])]
    if kind == 9:  # a huge declared size
        header = {"v": protocol.VERSION, "type": "grads", **fields, "arrays": [["<f4", [1 << 30, 1 << 30]]]}
        return [msgpack.packb(header), b"\x00" * 16]
    if kind == 10:  # too many or too few frames
        frames = protocol.encode(protocol.GRADS, grads, **fields)
        return frames[:-3] if rng.integers(2) else [*frames, b"extra"]
    if kind == 11:  # registration attempts: a live rank, an unknown rank
        return protocol.encode(protocol.HELLO, rank=int(rng.choice([0, 1, 7, -1])), pid=1, boot="x")
    if kind == 12:  # messages only the server may send
        return protocol.encode(protocol.STOP, reason="fuzz")
    if kind == 13:  # speaking for a live worker: its heartbeat, its READY, its gradient, duplicated
        return [
            protocol.encode(protocol.HEARTBEAT, rank=int(rng.integers(2)), answered=10**6),
            protocol.encode(protocol.READY, rank=int(rng.integers(2)), lane=""),
            protocol.encode(protocol.GRADS, grads, **{**fields, "rank": int(rng.integers(2))}),
        ][rng.integers(3)]
    if kind == 14:  # malformed tree nodes: not a node, overlapping, out of range, not pairs
        nodes = [[[1, 3]], [[0, 2], [0, 2]], [[0, 8]], [[0]], "0-2", []][rng.integers(6)]
        frames = protocol.encode(protocol.GRADS, grads, **fields)
        header = {**msgpack.unpackb(frames[0]), "nodes": nodes}  # encode itself would refuse "0-2"
        return [msgpack.packb(header), *frames[1:]]
    # a frame over the server's maximum message size: the server drops this connection
    return [
        msgpack.packb({"v": protocol.VERSION, "type": "ready", "rank": 0, "arrays": []}),
        b"\x00" * (1 << 20),
    ]


def fuzz(endpoint: str, key_dir: str, model: str) -> None:
    """The hostile peer, in a process of its own (a libzmq 4.3 assertion can abort a process that
    closes a socket mid-message: it must not be the test's). Its stdin brings the server's step,
    a line at a time, and closes when the hail must end; it then prints what it sent and got."""
    rng = np.random.default_rng(0)
    params = [p.data.copy() for p in build(model).parameters]
    held = keys.read(key_dir, keys.WORKER)  # the job's own worker key: a buggy or compromised peer
    step, sent, got = [0], 0, 0

    def read_steps() -> None:
        for line in sys.stdin:
            step[0] = int(line)
        step[0] = -1  # the test is over

    threading.Thread(target=read_steps, daemon=True).start()
    # a key holder may claim a rank nobody holds yet (the key is what guards registration), so
    # the hail starts once both workers are in; then every HELLO names a taken rank
    deadline = time.monotonic() + 120
    while step[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    context = zmq.Context()
    # one socket throughout: when the server drops it for an oversized frame, it reconnects by
    # itself (closing sockets mid-message trips a libzmq 4.3 assertion in the closing process)
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100)
    sock.setsockopt(zmq.RECONNECT_IVL, 10)
    sock.curve_secretkey, sock.curve_publickey = held.secret, held.public
    sock.curve_serverkey = held.peer_public
    sock.connect(endpoint)
    while step[0] > 0 and time.monotonic() < deadline:
        try:
            sock.send_multipart(malformed(rng, params, step[0]), flags=zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            time.sleep(0.001)
        if sock.poll(0):
            sock.recv_multipart()  # the server never answers a stranger; if it did, read it
            got += 1
    print(json.dumps({"sent": sent, "answered": got}), flush=True)
    sock.close(linger=0)
    context.term()


def test_server_survives_thousands_of_malformed_messages(
    mnist_dir, spawn_workers, server_transport, job_keys
):
    data = load("mnist", str(mnist_dir))
    config = JobConfig("conv-net", workers=2, max_steps=300, epochs=1, data_dir=str(mnist_dir))
    largest = buckets.largest_bytes(build(config.model), config.bucket_cap)
    transport = server_transport(max_message_bytes=max(largest, protocol.MAX_HEADER_BYTES))
    here = str(Path(__file__).parent)
    code = f"import sys; sys.path.insert(0, {here!r}); import test_fuzz; test_fuzz.fuzz(*sys.argv[1:])"
    stop = threading.Event()
    server = ParameterServer(config, transport, data)
    fuzzer = subprocess.Popen(
        [sys.executable, "-c", code, transport.endpoint, str(job_keys), config.model],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def tell_steps() -> None:  # the step, for stale, current and future messages
        while not stop.is_set():
            try:
                fuzzer.stdin.write(f"{server.step}\n")
                fuzzer.stdin.flush()
            except (BrokenPipeError, ValueError):
                return
            time.sleep(0.01)

    teller = threading.Thread(target=tell_steps, daemon=True)
    try:
        teller.start()
        spawn_workers(transport.endpoint, 2)
        server.run()
    finally:
        stop.set()
        transport.close(linger=5.0)
        teller.join(timeout=5)
        try:
            out, _ = fuzzer.communicate(timeout=30)  # its stdin closes: it stops, says what it did
        finally:
            fuzzer.kill()
            fuzzer.wait(timeout=10)
    # only its counts matter: whether its own libzmq survives closing its socket is not the server's
    report = json.loads(out.splitlines()[0])
    assert report["sent"] >= 2000, f"only {report['sent']} messages were sent while the server trained"
    assert report["answered"] == 0, "the server answered a stranger"
    assert server.rejected >= 1000

    clean = in_process_server(config, data)
    clean.run()
    for a, b in zip(server.params, clean.params):
        assert a.data.tobytes() == b.data.tobytes()


def test_nan_gradients_from_a_worker_stop_the_run(mnist_dir, tmp_path):
    data = load("mnist", str(mnist_dir))

    class Broken(Worker):
        def _step(self, msg, send):
            def poison(frames):  # the last bucket: the server has updated the others by then
                if msg["step"] == 3 and msgpack.unpackb(frames[0])["bucket"] == 2:
                    frames[1] = np.full_like(frames[1], np.nan)
                send(frames)

            super()._step(msg, poison)

    config = JobConfig(
        "fc-net",
        workers=2,
        max_steps=10,
        data_dir=str(mnist_dir),
        checkpoint_dir=str(tmp_path),
        checkpoint_every=1,
    )
    server = in_process_server(config, data, workers=[Worker(0, data), Broken(1, data)])
    with pytest.raises(FloatingPointError, match=r"step 3: worker\(s\) \[1\] sent non-finite gradients"):
        server.run()
    assert server.step == 3  # the bad gradient never reached Adam; the buckets updated before it
    assert server.optimizer.t == 3  # are put back
    assert all(np.isfinite(p.data).all() for p in server.params)
    good = checkpoint.latest(tmp_path)  # the last good checkpoint is intact: step 3, these weights
    assert good.meta["step"] == 3
    for name, p in server.net.named_parameters().items():
        assert good.params[name].tobytes() == p.data.tobytes()


def test_duplicated_and_replayed_answers_from_real_workers_are_dropped(mnist_dir):
    """Every worker message arrives twice, and last step's gradients come again: same weights."""
    data = load("mnist", str(mnist_dir))

    class Echo(LocalTransport):
        def __init__(self, workers):
            self.previous: list = []
            super().__init__(workers)

        def _deliver_reply(self, peer, frames):
            super()._deliver_reply(peer, frames)
            super()._deliver_reply(peer, frames)  # a duplicate
            if self.previous:  # and a replay of an older message from the same connection
                super()._deliver_reply(*self.previous.pop())
            self.previous.append((peer, frames))

    config = JobConfig("fc-net", workers=2, max_steps=6, data_dir=str(mnist_dir))
    server = ParameterServer(config, Echo([Worker(r, data) for r in range(2)]), data)
    server.run()
    assert server.rejected >= 2 * 6
    clean = in_process_server(config, data)
    clean.run()
    for a, b in zip(server.params, clean.params):
        assert a.data.tobytes() == b.data.tobytes()


def test_forged_bucket_messages_from_a_registered_worker_are_each_rejected(mnist_dir, caplog):
    """Rank 1 sends, before each real bucket, the same bucket with a wrong step, version, bucket,
    node, shape, length, dtype or update times, or said to be in shared memory it was never given,
    and after it a duplicate: each is rejected for its reason, and the weights are a clean run's."""
    data = load("mnist", str(mnist_dir))

    class Forger(Worker):
        def _step(self, msg, send):
            def forge(frames):
                header, arrays = msgpack.unpackb(frames[0]), protocol.decode(frames).arrays

                def again(changed=(), arrays=arrays):
                    fields = {
                        k: v
                        for k, v in {**header, **dict(changed)}.items()
                        if k not in ("v", "type", "arrays")
                    }
                    return protocol.encode(protocol.GRADS, arrays, **fields)

                for fake in (
                    again({"step": header["step"] + 1}),
                    again({"version": header["version"] - 1}),
                    again({"bucket": 7}),
                    again({"nodes": [[0, 1]], "counts": [16]}),
                    again(arrays=[a.reshape(1, -1) for a in arrays]),
                    again(arrays=[a[:-1] for a in arrays]),
                    again(arrays=[a.astype(np.float64) for a in arrays]),
                    again({"taken": [1.0]}),
                    again({"taken": [-1.0, 0.0, 0.0]}),
                    again({"prepared": [1.0]}),
                    again({"prepared": [1.0, float("nan")]}),
                    again({"prepared": [True, 0.5]}),
                    again({"prepared": [0.25, 0.25, 0.25]}),
                    again({"prepared": [0.0, 1e300]}),  # ends after the job started
                    again({"shared": True}, arrays=[]),  # in-process: it has no gradient file
                ):
                    send(fake)
                send(frames)
                send(again())  # a duplicate

            super()._step(msg, forge)

    config = JobConfig("fc-net", workers=2, max_steps=4, data_dir=str(mnist_dir))
    server = ParameterServer(config, LocalTransport([Worker(0, data), Forger(1, data)]), data)
    with caplog.at_level(logging.WARNING, logger="numpy_cnn.distributed.server"):
        server.run()
    # 16 per bucket of each of 4 steps; the duplicate of the very last may still be queued at the end
    assert 4 * 3 * 16 - 1 <= server.rejected <= 4 * 3 * 16 and server.lost == 0
    for reason in (
        "expected step 0 version 0",
        "bucket 7, but there are 3",
        "micro-shard nodes [(0, 1)] is not owed by worker 1",
        "array 0 is float32 (1, 1010), expected float32 (1010,)",  # a bucket travels flat
        "array 0 is float32 (40099,), expected float32 (40100,)",
        "array 0 is float64 (314000,), expected float32 (314000,)",
        "(a duplicate, or not its work)",
        "taken [1.0] is not 3 times, one per bucket",
        "taken [-1.0, 0.0, 0.0] is not 3 times, one per bucket",
        "prepared [1.0] is not [start, seconds] before the job started",
        "prepared [1.0, nan] is not [start, seconds]",
        "prepared [True, 0.5] is not [start, seconds]",
        "prepared [0.25, 0.25, 0.25] is not [start, seconds]",
        "prepared [0.0, 1e+300] is not [start, seconds] before the job started",
        "shared gradients from a worker that has no gradient file",
    ):
        assert reason in caplog.text, reason
    clean = in_process_server(config, data)
    clean.run()
    for a, b in zip(server.params, clean.params):
        assert a.data.tobytes() == b.data.tobytes()


def test_strangers_on_the_lanes_socket_get_nothing_through(
    mnist_dir, spawn_workers, server_transport, tmp_path
):
    """Two real workers train over ipc:// and lanes while a local stranger connects to the lanes'
    socket again and again, sends no token, a wrong one, a real worker's READY token replayed,
    garbage and forged gradients on unclaimed lanes, and READY with guessed tokens over ipc://.
    Nothing of it is read as a message: only the workers' own lanes are claimed, each stranger's
    READY is rejected, and the weights are a clean run's."""
    from numpy_cnn.distributed.lane import TOKEN_BYTES

    data = load("mnist", str(mnist_dir))
    config = JobConfig("fc-net", workers=2, max_steps=60, epochs=1, data_dir=str(mnist_dir))
    private = tmp_path / "ipc"
    private.mkdir(mode=0o700)
    transport = server_transport(ipc_dir=str(private))
    stop, tries = threading.Event(), [0]
    grads = protocol.encode(protocol.GRADS, **{**GRADS_FIELDS, "rank": 0})

    def stranger() -> None:
        import socket

        rng = np.random.default_rng(1)
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(transport.local_endpoint)
        opened = []
        try:
            while not stop.is_set() and tries[0] < 400:
                lane = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                opened.append(lane)
                lane.settimeout(0.2)
                try:  # nobody accepts a stranger's connection: the listen queue fills (128)
                    lane.connect(str(private / "lane"))
                except OSError:
                    lane = None
                first = [b"", rng.bytes(TOKEN_BYTES), rng.bytes(TOKEN_BYTES + 1)][tries[0] % 3]
                for packet in ([first] if first else []) + [grads[0], rng.bytes(64)]:
                    try:
                        lane.send(packet) if lane is not None else None
                    except OSError:
                        break  # its queue is full, or the server closed it
                guess = first.hex() if len(first) == TOKEN_BYTES else rng.bytes(TOKEN_BYTES).hex()
                dealer.send_multipart(protocol.encode(protocol.READY, rank=tries[0] % 2, lane=guess))
                tries[0] += 1
                time.sleep(0.002)
        finally:
            for lane in opened:
                lane.close()
            dealer.close()
            context.term()

    try:
        server = ParameterServer(config, transport, data)
        spawn_workers(transport.local_endpoint, 2)
        server.register()
        assert len(transport.lanes.by_peer) == 2
        hail = threading.Thread(target=stranger, daemon=True)
        hail.start()
        server.run()
        assert len(transport.lanes.by_peer) == 2  # the workers' own, and no other
        assert len(transport.lanes.unclaimed) <= 64
    finally:
        stop.set()
        transport.close(linger=5.0)
    hail.join(timeout=10)
    assert not hail.is_alive() and tries[0] >= 50, tries
    assert server.rejected >= 50  # the strangers' READYs that came while it trained
    with threadpool_limits(1):  # as in every worker process: one BLAS thread, the same bits
        clean = in_process_server(config, data)
        clean.run()
    for a, b in zip(server.params, clean.params):
        assert a.data.tobytes() == b.data.tobytes()
