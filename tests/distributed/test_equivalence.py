"""Gradient equivalence: the server's combined gradient is serial numpy_cnn's full-batch gradient.

The workers are real processes talking to a real ROUTER socket on 127.0.0.1; the server runs in
the test process so its gradient can be compared directly with the serial one.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from threadpoolctl import threadpool_limits

from numpy_cnn.data import batches, load, steps_per_epoch
from numpy_cnn.distributed import protocol
from numpy_cnn.distributed.config import JobConfig
from numpy_cnn.distributed.inprocess import in_process_server
from numpy_cnn.distributed.server import ParameterServer
from numpy_cnn.distributed.stats import EpochStats
from numpy_cnn.loss import CrossEntropyLoss
from numpy_cnn.models import build, input_shape

RTOL = {"float64": 1e-10, "float32": 1e-5}


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load("mnist", str(mnist_dir))


def serial_gradient(config: JobConfig, data, epoch: int, index: int) -> list[np.ndarray]:
    """numpy_cnn's gradient of the mean loss over the whole global batch, in one forward/backward."""
    net = build(config.model, seed=config.seed, dtype=config.dtype)
    # the global batch as serial training's iterator makes it (shuffled, and shifted for the conv-net)
    x, y = next(
        batches(
            data.train.images,
            data.train.labels,
            config.batch_size,
            config.seed,
            epoch,
            input_shape(config.model),
            start=index,
            max_shift=config.max_shift,
        )
    )
    loss = CrossEntropyLoss()
    preds = net.forward(x)
    net.backward(loss.grad(preds, y))
    return [p.grad.copy() for p in net.parameters]


def combined_gradient(server: ParameterServer, epoch: int, index: int) -> list[np.ndarray]:
    server.register()
    server.train_step(epoch, index, EpochStats())
    gradient = [p.grad.copy() for p in server.params]
    server.stop_workers(protocol.FINISHED)
    return gradient


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("model", ["fc-net", "conv-net"])
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_workers_over_zeromq_give_the_full_batch_gradient(
    mnist, mnist_dir, spawn_workers, server_transport, model, workers, dtype
):
    config = JobConfig(model, workers=workers, shards=4, dtype=dtype, seed=1, data_dir=str(mnist_dir))
    transport = server_transport()
    try:
        server = ParameterServer(config, transport, mnist)
        processes = spawn_workers(transport.endpoint, workers)
        gradient = combined_gradient(server, epoch=0, index=5)
    finally:
        transport.close(linger=5.0)
    for p in processes:
        assert p.wait(timeout=30) == 0, p.stdout.read().decode()
    expected = serial_gradient(config, mnist, epoch=0, index=5)
    for got, want in zip(gradient, expected):
        assert got.dtype == want.dtype == np.dtype(dtype)
        assert_close(got, want, rtol=RTOL[dtype])


@pytest.mark.parametrize(
    "batch_size,last",
    [
        (64, True),  # 60000 = 937 * 64 + 32: a short last batch
        (50, False),  # 50 samples over 4 shards: 13, 13, 12, 12
        (7, True),  # 60000 = 8571 * 7 + 3: the last batch leaves one shard empty
    ],
)
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_uneven_and_short_batches_are_exact_too(mnist, workers, batch_size, last):
    config = JobConfig("conv-net", workers=workers, batch_size=batch_size, dtype="float64")
    index = steps_per_epoch(len(mnist.train), batch_size) - 1 if last else 3
    gradient = combined_gradient(in_process_server(config, mnist), epoch=2, index=index)
    for got, want in zip(gradient, serial_gradient(config, mnist, epoch=2, index=index)):
        assert_close(got, want, rtol=RTOL["float64"])


def test_in_process_and_zeromq_workers_give_the_same_bits(mnist, mnist_dir, spawn_workers, server_transport):
    config = JobConfig("conv-net", workers=2, data_dir=str(mnist_dir))
    local = combined_gradient(in_process_server(config, mnist), 1, 7)
    transport = server_transport()
    try:
        server = ParameterServer(config, transport, mnist)
        spawn_workers(transport.endpoint, 2)
        remote = combined_gradient(server, 1, 7)
    finally:
        transport.close(linger=5.0)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(local, remote))


def test_one_bucket_sends_no_updates_and_streamed_buckets_give_the_same_bits(mnist, mnist_dir):
    """--buckets one: each worker sends one gradient message per step and gets the new weights in
    the next PARAMS, with no UPDATE between; the weights are the streamed run's (whose last bucket
    of a step rides with the next PARAMS too)."""
    from numpy_cnn.distributed.transport import LocalTransport
    from numpy_cnn.distributed.worker import Worker

    class Counting(Worker):
        def handle(self, msg, send=None):
            self.seen.append((msg.type, len(msg.arrays)))
            return super().handle(msg, send)

    runs = {}
    for mode in ("stream", "one"):
        config = JobConfig("conv-net", workers=2, max_steps=3, buckets=mode, data_dir=str(mnist_dir))
        workers = [Counting(0, mnist), Counting(1, mnist)]
        for w in workers:
            w.seen = []
        server = ParameterServer(config, LocalTransport(workers), mnist)
        server.run()
        runs[mode] = [p.data.tobytes() for p in server.params]
        kinds = [t for t, _ in workers[0].seen]
        carried = [n for t, n in workers[0].seen if t == protocol.PARAMS]
        if mode == "one":
            assert len(server.buckets) == 1 and protocol.UPDATE not in kinds
            assert carried == [1, 1, 1]  # every weight, in one flat array
        else:  # an UPDATE for each bucket but a step's last, which rides with the next PARAMS
            assert len(server.buckets) == 3 and kinds.count(protocol.UPDATE) == 2 * 3
            assert carried == [3, 1, 1]  # every bucket, then the two convolutions' (a flat array each)
    assert runs["one"] == runs["stream"]


def test_the_next_step_starts_before_the_step_is_booked_and_keeps_the_bits(
    mnist, mnist_dir, spawn_workers, server_transport, tmp_path
):
    """With `following`, the next step's PARAMS go out as soon as a step's last bucket is updated:
    the workers compute it while the server books the step (statistics, a checkpoint), which must
    still see the step's own state (Adam's count not yet moved). Over ipc://, with lanes."""
    config = JobConfig("fc-net", workers=2, seed=3, data_dir=str(mnist_dir))
    private = tmp_path / "ipc"
    private.mkdir(mode=0o700)
    transport = server_transport(ipc_dir=str(private))
    try:
        server = ParameterServer(config, transport, mnist)
        processes = spawn_workers(transport.local_endpoint, 2)
        server.register()
        stats = EpochStats()
        server.train_step(0, 0, stats, following=(0, 1))
        assert server.step == 1 and server.optimizer.t == 1 and server.begun == (1, 0, 1)
        assert len(server.ledger.owed_by(0)) == len(server.ledger.owed_by(1)) == 1  # step 1, out
        peer, frames = transport.recv(10.0)  # already computed, nothing else asked for
        early = protocol.decode(frames)
        assert early.type == protocol.GRADS and early["step"] == 1
        server._on_message(peer, frames)
        server.train_step(0, 1, stats)
        assert stats.steps == 2 and stats.samples == 2 * config.batch_size
        server.stop_workers(protocol.FINISHED)
    finally:
        transport.close(linger=5.0)
    for p in processes:
        assert p.wait(timeout=30) == 0, p.stdout.read().decode()
    with threadpool_limits(1):  # as in every worker process: one BLAS thread, the same bits
        clean = in_process_server(config, mnist)
        clean.register()
        for index in (0, 1):
            clean.train_step(0, index, EpochStats())
    for a, b in zip(server.params, clean.params):
        assert a.data.tobytes() == b.data.tobytes()
