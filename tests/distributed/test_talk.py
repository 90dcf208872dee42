"""The talking thread's own bookkeeping: a fresh Link replaces the old one in the poll whatever the
old one's state."""

from __future__ import annotations

import os
import re

import pytest

from numpy_cnn.distributed.config import SPIN_S, JobConfig, local_spin, machine_cores, spin_seconds
from numpy_cnn.distributed.lane import Lane, Lanes
from numpy_cnn.distributed.talk import Talk
from numpy_cnn.distributed.worker import Worker


def test_a_link_lost_while_a_job_computes_is_replaced(tmp_path):
    """While a job computes, the socket and the lane are out of the poll (Talk.run); a connection
    that drops then must still give way to a fresh Link (it once raised KeyError in
    Poller.unregister), and the old lane must go with the old socket."""
    lanes = Lanes(str(tmp_path))
    talk = Talk(Worker(0), f"ipc://{tmp_path}/server", keys=None, join_timeout=5.0)
    try:
        old = talk.link
        with talk.lock:  # READY sent: the lane is the Link's, and in the poll
            old.adopt(Lane(lanes.path, 5.0))
            talk._listen(True)
        assert {s for s, _ in talk.poller.sockets} >= {old.socket, old.lane.fileno()}
        with talk.lock:  # what run does when a job starts computing
            talk._listen(False)
        talk._connect()  # what _lost does
        assert talk.link is not old and old.socket.closed and talk.listening and talk.link.lane is None
        assert old.lane.socket.fileno() == -1  # closed
        registered = [s for s, _ in talk.poller.sockets]
        assert talk.link.socket in registered and talk.link.monitor in registered
        assert old.socket not in registered and old.monitor not in registered
        assert len(registered) == 3  # with the compute thread's pipe: nothing of the old Link's
    finally:
        talk.close()
        lanes.close()


@pytest.mark.parametrize("spin_us", ["0", "1000000"])
def test_the_compute_thread_takes_its_next_job_off_the_socket_itself(
    tmp_path, mnist_dir, monkeypatch, spin_us
):
    """After a gradient job the compute thread makes the next batch and takes the next PARAMS off
    the socket itself (Talk.next_job), without the talking thread; every job is still answered,
    counted in the heartbeats, and a STOP that comes while it waits ends the worker: sleeping in
    poll (spin 0), or polling (a 1 s spin, which every wait here goes through). On Linux the
    compute thread runs under SCHED_BATCH (talk.batch_policy), the talking thread as before."""
    import threading

    import numpy as np
    import zmq

    from numpy_cnn.distributed import agreement, protocol
    from numpy_cnn.distributed.config import JobConfig
    from numpy_cnn.models import build

    class Recording(Talk):
        def _take(self):
            before = len(self.todo)
            super()._take()
            if len(self.todo) > before and self.todo[-1].type == protocol.PARAMS:
                taken_on.append(threading.current_thread().name)
                if hasattr(os, "SCHED_BATCH"):  # 0: the calling thread
                    policies.add((threading.current_thread().name, os.sched_getscheduler(0)))

    monkeypatch.setenv("NUMPY_CNN_SPIN_US", spin_us)
    taken_on: list[str] = []
    policies: set[tuple[str, int]] = set()
    inherited = os.sched_getscheduler(0) if hasattr(os, "SCHED_BATCH") else None  # pytest's own
    config = JobConfig("fc-net", workers=1, shards=2, buckets="one", timeout=5.0, data_dir=str(mnist_dir))
    net = build("fc-net", seed=config.seed)
    weights = np.concatenate([p.data.ravel() for p in net.parameters])  # one bucket, flat
    context = zmq.Context()
    server = context.socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    server.bind(f"ipc://{tmp_path}/server")
    talk = Recording(Worker(0), f"ipc://{tmp_path}/server", keys=None, join_timeout=10.0)
    thread = threading.Thread(target=talk.run, name="talk", daemon=True)
    thread.start()

    def next_of(kind: str) -> tuple[bytes, protocol.Message]:
        for _ in range(100):  # heartbeats may come between
            assert server.poll(10_000), f"no {kind} from the worker"
            peer, *frames = server.recv_multipart()
            msg = protocol.decode(frames)
            if msg.type == kind:
                return peer, msg
        raise AssertionError(f"no {kind} among 100 messages")

    try:
        peer, _ = next_of(protocol.HELLO)
        expect = agreement.identity(net, config.dataset)
        welcome = protocol.encode(protocol.WELCOME, rank=0, config=config.to_dict(), expect=expect, memory={})
        server.send_multipart([peer, *welcome])
        next_of(protocol.READY)
        jobs = 6
        for step in range(jobs):
            frames = protocol.encode(
                protocol.PARAMS, [weights], step=step, version=step, epoch=0, index=step,
                nodes=[[0, 2]], buckets=[0], carried=[0], sides=[],
            )  # fmt: skip
            server.send_multipart([peer, *frames], copy=False)
            _, grads = next_of(protocol.GRADS)
            assert grads["step"] == step
        for _ in range(50):  # the next heartbeat says every job was answered
            _, beat = next_of(protocol.HEARTBEAT)
            if beat["answered"] == jobs:
                break
        else:
            raise AssertionError("the heartbeats never said every job was answered")
        assert taken_on[0] == "talk"  # the first job comes to the talking thread
        assert taken_on[1:].count("compute") >= jobs - 2, taken_on  # a heartbeat's wake may take one
        if hasattr(os, "SCHED_BATCH"):
            assert {policy for name, policy in policies if name == "compute"} == {os.SCHED_BATCH}, policies
            assert ("talk", inherited) in policies, policies
        server.send_multipart([peer, *protocol.encode(protocol.STOP, reason="test over")])
        thread.join(timeout=5.0)
        assert not thread.is_alive() and talk.worker.stop_reason == "test over"
    finally:
        talk.close()
        server.close(linger=0)
        context.term()


def test_spin_seconds_reads_microseconds_and_names_the_variable():
    assert spin_seconds(None) is None and spin_seconds("") is None and spin_seconds(" ") is None
    assert spin_seconds("0") == 0.0 and spin_seconds("250") == 0.00025 and spin_seconds("1000000") == 1.0
    assert spin_seconds(" 250 ") == 0.00025
    for bad in ("abc", "-1", "0.5", "1000001", "1_000", "+5", "\u0663"):
        with pytest.raises(
            ValueError, match="NUMPY_CNN_SPIN_US must be whole microseconds .* got " + re.escape(repr(bad))
        ):
            spin_seconds(bad)


@pytest.mark.parametrize("variable", [None, "0", "300"])
def test_the_compute_thread_polls_only_where_each_worker_can_have_a_core(tmp_path, monkeypatch, variable):
    """Talk._spin: SPIN_S while the job's workers are no more than this machine's cores, none
    beyond (a polling worker would take a core from one that computes); the variable overrides."""
    if variable is None:
        monkeypatch.delenv("NUMPY_CNN_SPIN_US", raising=False)
    else:
        monkeypatch.setenv("NUMPY_CNN_SPIN_US", variable)
    cores = machine_cores()
    talk = Talk(Worker(0), f"ipc://{tmp_path}/server", keys=None, join_timeout=5.0)
    try:
        spins = {}
        for workers in (1, cores, cores + 1):
            talk.worker.config = JobConfig("fc-net", workers=workers, shards=workers)
            spins[workers] = talk._spin()
    finally:
        talk.close()
    if variable is None:
        assert spins == {1: SPIN_S, cores: SPIN_S, cores + 1: 0.0}
    else:
        assert set(spins.values()) == {int(variable) / 1e6}


def test_a_launcher_sets_the_spin_for_the_workers_of_its_own_machine(monkeypatch):
    """A worker counts the whole job's workers (Talk._spin); a launcher knows how many it starts
    on its machine: 2 nodes of 2 workers on 2 cores each poll; a value the user set is left."""
    monkeypatch.delenv("NUMPY_CNN_SPIN_US", raising=False)
    assert local_spin(2, cores=2) == {"NUMPY_CNN_SPIN_US": "1000"}
    assert local_spin(3, cores=2) == {"NUMPY_CNN_SPIN_US": "0"}
    monkeypatch.setenv("NUMPY_CNN_SPIN_US", "250")
    assert local_spin(3, cores=2) == {}
