"""Worker, driven message by message: its gradient sums, bucket by bucket, are serial training's
micro-shard gradients bit for bit; it keeps the parameters the server sends by bucket and version;
and it refuses what it cannot compute."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from numpy_cnn import Net, buckets, layers
from numpy_cnn.data import global_batch, load
from numpy_cnn.distributed import agreement, memory, protocol
from numpy_cnn.distributed.config import JobConfig
from numpy_cnn.distributed.protocol import ProtocolError
from numpy_cnn.distributed.worker import Worker
from numpy_cnn.loss import CrossEntropyLoss
from numpy_cnn.models import build, input_shape
from numpy_cnn.shards import shard_bounds, shard_gradient, tree_nodes, tree_sum


@pytest.fixture(scope="module")
def data(mnist_dir):
    return load("mnist", str(mnist_dir))


def welcome(worker: Worker, config: JobConfig, memory: dict | None = None) -> None:
    memory = {} if memory is None else memory
    expect = agreement.identity(build(config.model, seed=config.seed), config.dataset)
    msg = protocol.encode(
        protocol.WELCOME, rank=worker.rank, config=config.to_dict(), expect=expect, memory=memory
    )
    msg = protocol.decode(msg)
    (ready,) = map(protocol.decode, worker.handle(msg))
    assert ready.type == protocol.READY and ready["rank"] == worker.rank


def flat(net, ids):
    """The values of parameters `ids` of `net`, end to end: a bucket as it travels."""
    return np.concatenate([net.parameters[i].data.ravel() for i in ids])


def params(net, nodes, epoch=1, index=5, step=3, wanted=(0, 1, 2), carried=None, plan=None, sides=None):
    """A PARAMS job carrying `net`'s values of the buckets `carried` (default: all of `plan`), or,
    with `sides`, naming the buffers of the shared parameters that hold them."""
    plan = buckets.plan(net) if plan is None else plan
    carried = range(len(plan)) if carried is None else carried
    return protocol.decode(
        protocol.encode(
            protocol.PARAMS,
            [flat(net, plan[b]) for b in carried] if sides is None else [],
            step=step,
            version=step,
            epoch=epoch,
            index=index,
            nodes=[list(n) for n in nodes],
            buckets=list(wanted),
            carried=list(carried),
            sides=[] if sides is None else sides,
        )
    )


def update(net, bucket, version):
    ids = buckets.plan(net)[bucket]
    frames = protocol.encode(
        protocol.UPDATE,
        [flat(net, ids)],
        step=version - 1,
        version=version,
        bucket=bucket,
        side=-1,
    )
    return protocol.decode(frames)


def test_grads_are_the_serial_micro_shard_sums(data):
    config = JobConfig("conv-net", workers=2, shards=4, seed=2)
    worker = Worker(1, data)
    welcome(worker, config)
    net = build("conv-net", seed=7)  # weights that are not the workers' initial ones
    with threadpool_limits(1):
        replies = [protocol.decode(f) for f in worker.handle(params(net, [(2, 4)]))]
        assert [r["bucket"] for r in replies] == [0, 1, 2]  # the last layers' first
        for r in replies:
            assert r.type == protocol.GRADS and r["nodes"] == [[2, 4]] and r["counts"] == [32]
        assert [r["compute_s"] for r in replies] == sorted(r["compute_s"] for r in replies)
        batch = global_batch(len(data.train), 64, 2, 1, 5, config.max_shift)
        bounds = shard_bounds(64, 4)
        leaves = {}
        for k in (2, 3):
            replica = build("conv-net", seed=7)
            x, y = batch.samples(data.train.images, data.train.labels, input_shape("conv-net"), *bounds[k])
            shard_gradient(replica, CrossEntropyLoss(), x, y, 64)
            leaves[(k, k + 1)] = [p.grad.copy() for p in replica.parameters]
    want = tree_sum((2, 4), leaves, {})
    for r, ids in zip(replies, buckets.plan(net)):  # one flat sum per node
        assert [a.tobytes() for a in r.arrays] == [b"".join(want[i].tobytes() for i in ids)]
    # the job that sends only bucket 2 (a take-over of what a lost worker still owed) sends the same
    with threadpool_limits(1):
        (again,) = map(protocol.decode, worker.handle(params(net, [(2, 4)], wanted=[2])))
    assert again["bucket"] == 2 and [a.tobytes() for a in again.arrays] == [
        a.tobytes() for a in replies[2].arrays
    ]


def test_holds_parameters_by_bucket_and_version(data):
    config = JobConfig("conv-net", workers=2, shards=4, seed=2)
    worker = Worker(0, data)
    welcome(worker, config)
    old, new = build("conv-net", seed=7), build("conv-net", seed=8)
    with pytest.raises(ProtocolError, match="holds versions"):  # nothing held yet: arrays needed
        worker.handle(params(old, [(0, 2)], carried=()))
    with threadpool_limits(1):
        worker.handle(params(old, [(0, 2)]))  # version 3, held from now on
        for b in range(2):
            worker.handle(update(new, b, 4))
        assert worker.taken[3][:2] != [0.0, 0.0] and worker.taken[3][2] == 0.0
        # the step's last bucket comes with the next job, which uses the others held
        rode = worker.handle(params(new, [(0, 2)], step=4, carried=[2]))
        assert worker.held == [4, 4, 4] and 0.0 not in worker.taken[3]  # when each update came
        streamed = worker.handle(params(new, [(0, 2)], step=4, carried=()))  # uses what it holds
        sent = worker.handle(params(new, [(0, 2)], step=4))
        # a take-over job of version 3 brings its own parameters and leaves those held alone
        worker.handle(params(old, [(0, 2)], step=3))
        assert worker.held == [4, 4, 4]
        assert all(
            a is b.data or a.tobytes() == b.data.tobytes() for a, b in zip(worker.current, new.parameters)
        )
    assert len(rode) == len(streamed) == len(sent) == 3
    for a, b, c in zip(*(map(protocol.decode, job) for job in (rode, streamed, sent))):
        assert [x.tobytes() for x in a.arrays] == [y.tobytes() for y in b.arrays]
        assert [x.tobytes() for x in a.arrays] == [y.tobytes() for y in c.arrays]
    with pytest.raises(ProtocolError, match="holds versions"):
        worker.handle(params(new, [(0, 2)], step=5, carried=[0, 2]))
    for carried in ([2, 1], [1, 1], [3], [True]):
        with pytest.raises(ProtocolError, match="carried buckets"):
            worker.handle(params(new, [(0, 2)], step=5, carried=carried, plan=[*buckets.plan(new), [0], [0]]))
    with pytest.raises(ProtocolError, match="parameters do not match"):  # bucket 1's values as bucket 2's
        worker.handle(params(new, [(0, 2)], step=5, carried=[2], plan=[[], [], buckets.plan(new)[1]]))
    with pytest.raises(ProtocolError, match="bucket 1 do not match"):
        worker.handle(_wrong_bucket(new))
    with pytest.raises(ProtocolError, match="update of bucket 3"):
        worker.handle(protocol.decode(protocol.encode(protocol.UPDATE, step=0, version=9, bucket=3, side=-1)))


def _wrong_bucket(net):
    """Bucket 1's update carrying bucket 0's arrays."""
    frames = protocol.encode(
        protocol.UPDATE, [flat(net, buckets.plan(net)[0])], step=4, version=5, bucket=1, side=-1
    )
    return protocol.decode(frames)


def test_refuses_work_it_cannot_do(data):
    worker = Worker(0, data)
    net = build("fc-net")
    with pytest.raises(ProtocolError, match="before the job's config"):
        worker.handle(params(net, [(0, 2)]))
    welcome(worker, JobConfig("conv-net", workers=2))
    with pytest.raises(ProtocolError, match="do not match"):
        worker.handle(params(net, [(0, 2)]))  # fc-net weights for a conv-net
    conv = build("conv-net")
    with pytest.raises(ProtocolError, match="not a node"):
        worker.handle(params(conv, [(1, 3)]))
    with pytest.raises(ProtocolError, match="has no batch"):
        worker.handle(params(conv, [(0, 2)], index=10_000))
    with pytest.raises(ProtocolError, match="buckets"):
        worker.handle(params(conv, [(0, 2)], wanted=[3]))
    with pytest.raises(ProtocolError, match="welcomed as rank 1"):
        worker.handle(
            protocol.decode(protocol.encode(protocol.WELCOME, rank=1, config={}, expect={}, memory={}))
        )
    stop = protocol.decode(protocol.encode(protocol.STOP, reason="test over"))
    assert worker.handle(stop) == [] and worker.stopped and worker.stop_reason == "test over"


def test_a_worker_that_differs_from_the_server_refuses_naming_the_difference(data):
    config = JobConfig("fc-net", workers=2)
    expect = agreement.identity(build("fc-net"), "mnist")
    conv = agreement.identity(build("conv-net"), "mnist")
    reseeded = agreement.identity(build("fc-net", seed=1), "mnist")
    rng = np.random.default_rng(0)  # fc-net's first layer, drawn as fc-net draws it: the same values
    narrower = agreement.identity(
        Net([layers.Linear(784, 400, rng=rng), layers.ReLU(), layers.Linear(400, 90, rng=rng)]), "mnist"
    )
    for change, words in [
        ({"package": "0.0.1"}, r"numpy_cnn version differs: the server has 0.0.1"),
        (
            {"model": conv["model"]},
            r"model fc-net differs: the server has 12 layers, sha256 \w+, this worker",
        ),
        (
            {"model": conv["model"], "layers": conv["layers"]},
            r"net.layers\[0\] is Conv2d\(1, 6, .*\) on the server, Linear\(784, 400\) on this worker",
        ),
        (
            {"model": narrower["model"], "layers": narrower["layers"]},
            r"net.layers\[2\] is Linear\(400, 90\) on the server, Linear\(400, 100\) on this worker",
        ),
        (
            {"model": reseeded["model"], "layers": reseeded["layers"]},
            r"parameter 0.weight of net.layers\[0\] \(Linear\(784, 400\)\) has other initial values",
        ),
        ({"data": agreement.data_digest("fashion-mnist")}, "data differs: the server has fashion-mnist"),
    ]:
        welcome = protocol.encode(
            protocol.WELCOME, rank=0, config=config.to_dict(), expect={**expect, **change}, memory={}
        )
        with pytest.raises(agreement.Disagreement, match=words):
            Worker(0, data).handle(protocol.decode(welcome))


def test_a_worker_that_cannot_import_the_model_refuses_naming_it(data, tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "from numpy_cnn import Net, Flatten, Linear\n\n"
        "def net(rng):\n    return Net([Flatten(), Linear(784, 10, rng=rng)])\n"
    )
    config = JobConfig(f"{path}:net", workers=2)
    expect = agreement.identity(build(config.model, data=data), "mnist")
    welcome = protocol.encode(protocol.WELCOME, rank=0, config=config.to_dict(), expect=expect, memory={})
    path.unlink()  # this worker's machine has no such file
    with pytest.raises(agreement.Disagreement, match=f"model {path}:net: cannot read {path}"):
        Worker(0, data).handle(protocol.decode(welcome))


@pytest.mark.parametrize("buckets", ["stream", "one"])
def test_the_next_batch_is_made_while_the_gradients_travel(data, buckets):
    config = JobConfig("conv-net", workers=2, shards=4, seed=2, buckets=buckets)
    worker = Worker(1, data)
    welcome(worker, config)
    net = build("conv-net", seed=7)
    last = len(data.train) // 64  # 60000 = 937 * 64 + 32: batch 937 is the epoch's short last one
    wanted, plan = range(len(worker.buckets)), worker.buckets
    for epoch, index, following in [(1, 5, (1, 6)), (1, last, (2, 0))]:
        with threadpool_limits(1):
            worker.handle(params(net, [(2, 4)], epoch=epoch, index=index, wanted=wanted, plan=plan))
        worker.prepare_next()
        batch = global_batch(len(data.train), 64, 2, *following, config.max_shift)
        bounds = shard_bounds(len(batch), 4)
        assert sorted(worker.prepared) == [(*following, 2), (*following, 3)]
        for k in (2, 3):
            x, y = worker.prepared[(*following, k)]
            want_x, want_y = batch.samples(
                data.train.images, data.train.labels, input_shape("conv-net"), *bounds[k]
            )
            if buckets == "stream":  # and conv1's columns, which read no weight
                want = worker.job.replica(k).layers[0].columns(want_x)
                assert x.geometry == want.geometry and x.col.tobytes() == want.col.tobytes()
            else:  # the cores are full: only the samples
                assert x.tobytes() == want_x.tobytes()
            assert np.array_equal(y, want_y)
    with threadpool_limits(1):
        worker.handle(params(net, [(2, 4)], epoch=2, index=0, wanted=wanted, plan=plan))
    assert worker.prepared == {}  # used, not kept


def test_preparing_stops_when_the_parameters_come_and_the_job_makes_the_rest(data):
    config = JobConfig("conv-net", workers=2, shards=4, seed=2, buckets="stream")
    net = build("conv-net", seed=7)
    answers = []
    for prepared in (0, 1, 2):  # shards made before the next job came
        worker = Worker(1, data)
        welcome(worker, config)
        with threadpool_limits(1):
            first = worker.handle(params(net, [(2, 4)], index=5))
            asked = iter(range(10))  # until() is asked before each shard
            worker.prepare_next(until=lambda asked=asked, prepared=prepared: next(asked) >= prepared)
            assert len(worker.prepared) == prepared
            replies = worker.handle(params(net, [(2, 4)], index=6))
        answers.append([a.tobytes() for frames in replies for a in protocol.decode(frames).arrays])
        # each GRADS says when the worker made its batch ahead, if it made any (stats.EpochStats)
        assert all(protocol.decode(frames)["prepared"] == [] for frames in first)
        for frames in replies:
            msg = protocol.decode(frames)
            if prepared:
                start, seconds = msg["prepared"]
                assert seconds > 0 and start + seconds <= msg["started"]
            else:
                assert msg["prepared"] == []
    assert answers[0] == answers[1] == answers[2]


def test_a_worker_on_the_server_s_machine_reads_and_writes_shared_memory_with_the_same_bits(data, tmp_path):
    """Given the server's files (distributed/memory.py), a worker computes with the parameters
    where the server keeps them and writes each node's sums at the node's slot of its gradient
    file, sending no arrays: the bits a worker that gets and sends arrays computes."""
    folder = tmp_path / "job"
    folder.mkdir(mode=0o700)
    config = JobConfig("conv-net", workers=2, shards=4, seed=2)
    net, old = build("conv-net", seed=7), build("conv-net", seed=8)
    layout = buckets.Layout.of(net, buckets.plan(net))
    nodes = tree_nodes(4)
    made = (
        memory.create(folder, "params-", 2 * layout.size * 4),
        memory.create(folder, "grads-1-", 7 * layout.size * 4),
    )
    sides = made[0].array(np.dtype(np.float32), (2, layout.size))
    sides[0] = flat(old, [i for ids in layout.plan for i in ids])
    sides[1] = flat(net, [i for ids in layout.plan for i in ids])
    files = {"params": str(made[0].path), "grads": str(made[1].path)}
    shared, plain = Worker(1, data), Worker(1, data)
    shared.folder = str(folder)
    welcome(shared, config, files)
    welcome(plain, config)
    with threadpool_limits(1):
        got = [protocol.decode(f) for f in shared.handle(params(net, [(2, 4)], sides=[1, 1, 1]))]
        want = [protocol.decode(f) for f in plain.handle(params(net, [(2, 4)]))]
    area = made[1].array(np.dtype(np.float32), (len(nodes), layout.size))
    for b, (g, w) in enumerate(zip(got, want)):
        assert g["shared"] and g.arrays == [] and not w["shared"]
        assert area[nodes.index((2, 4)), layout.span(b)].tobytes() == w.arrays[0].tobytes()
    assert not shared.current[0].flags.writeable
    at = layout.offset[0]  # the worker reads the server's buffer itself, not a copy of it
    sides[1, at] = 42.0
    assert shared.current[0].flat[0] == 42.0
    # an UPDATE names the buffer that holds the bucket's new values
    update = protocol.encode(protocol.UPDATE, step=3, version=4, bucket=0, side=0)
    shared.handle(protocol.decode(update))
    assert shared.held[0] == 4 and shared.current[layout.plan[0][0]].base is not None
    for bad, words in [
        (params(net, [(2, 4)], step=4, carried=[1, 2], sides=[1, 2]), "buffers \\[1, 2\\]"),
        (params(net, [(2, 4)], step=4, carried=[1, 2], sides=[1]), "buffers \\[1\\]"),
    ]:
        with pytest.raises(ProtocolError, match=words):
            shared.handle(bad)
    with pytest.raises(ProtocolError, match="shared parameters this worker cannot read"):
        plain.handle(params(net, [(2, 4)], step=4, sides=[0, 0, 0]))
    tcp = Worker(1, data)  # a worker that reached the server over TCP cannot map its files
    with pytest.raises(ProtocolError, match="offered to a worker that cannot map it"):
        welcome(tcp, config, files)
    elsewhere = Worker(1, data)
    elsewhere.folder = str(tmp_path)
    with pytest.raises(
        ProtocolError, match="cannot map the server's shared memory: .* not in the job's folder"
    ):
        welcome(elsewhere, config, files)
