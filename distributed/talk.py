"""How a worker process talks to its server: one thread on the ZeroMQ socket (`Talk`), one that
computes (`ComputeThread`), and `serve`, which runs them until the server says stop.

The worker itself (distributed.worker.Worker) only reacts to messages; everything about sockets,
heartbeats, silence and coming back to a restarted server is here.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import zmq

from . import agreement, protocol
from .config import SPIN_ENV, JobConfig, spin_for, spin_seconds
from .keys import Keys
from .link import Link
from .protocol import Message, ProtocolError

log = logging.getLogger("numpy_cnn.distributed.worker")

HELLO_INTERVAL_S = 1.0  # a worker not yet welcomed says HELLO again this often
# how long the compute thread waits on the socket at a time, holding the lock, for its next job:
# the talking thread's heartbeats wait at most this long for the socket
FETCH_SLICE_MS = 20

Worker = Any  # distributed.worker.Worker, which imports this module: hello, handle, prepare_next


class ServerSilent(TimeoutError):
    """The server, after welcoming this worker, said nothing for the job's --timeout."""


def batch_policy() -> None:
    """Mark the calling thread CPU-bound for Linux's scheduler: SCHED_BATCH, at the same nice
    value, which needs no privilege. Woken, a batch thread does not preempt the thread running on
    its core. The server wakes its workers one PARAMS after another, and a worker woken on the
    server's core used to take that core in the middle of the sends, holding up the next worker's
    PARAMS: 2.4 ms at the 90th percentile, at 2 workers on 2 cores. The server stays a normal
    thread, so a GRADS still gets it a core at once. Elsewhere (no SCHED_BATCH), nothing changes."""
    if hasattr(os, "SCHED_BATCH"):
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # 0: this thread
        except OSError as e:  # e.g. a seccomp policy that forbids it: only slower
            log.debug("worker: SCHED_BATCH not set: %s", e)


class ComputeThread:
    """One daemon thread that runs `worker.handle` on the jobs the talking thread gives it, and,
    after a gradient job, fetches the next one from the socket itself (Talk.next_job).

    Each bucket's GRADS that a job sends goes out through Talk.send_from_job: on the socket
    itself, under the talking thread's lock, at once and without waking the talking thread. After
    a gradient job the thread makes the next batch (Worker.prepare_next) and takes the next PARAMS
    off the socket itself, so the parameters reach the computation with no hand-over between
    threads: on a machine whose cores the workers fill, each wake-up and each pass of the
    interpreter from one thread to the other sat on the step's critical path. It hands the work
    back to the talking thread (a result, and a byte on a pipe that wakes its poll) when a job
    fails, when something other than a job comes, or when the Link changes. It runs under
    SCHED_BATCH (batch_policy), the talking thread as a normal thread. A daemon, so a
    computation that hangs never keeps the process from exiting. The pipe is never closed: the
    thread may still write to it after the talking thread has given up, and the process ends soon
    after.
    """

    def __init__(self, worker: Worker, talk: Talk) -> None:
        self.worker, self.talk = worker, talk
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.jobs: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.result: tuple[list, BaseException | None] | None = None
        self.busy = False  # given a job by the talking thread, and not handed back yet
        self.running = False  # a gradient job is computing right now (Talk's heartbeats)
        threading.Thread(target=self._run, name="compute", daemon=True).start()

    def submit(self, msg: Message) -> None:
        self.busy, self.result = True, None
        self.jobs.put(msg)

    def woken(self) -> None:
        """Read the wake-up bytes (the poll said there are some)."""
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass

    def take(self) -> list:
        """The replies of the last job handed back; raises what it raised."""
        (replies, error), self.result, self.busy = self.result, None, False
        if error is not None:
            raise error
        return replies

    def _run(self) -> None:
        batch_policy()
        while True:
            msg: Message | None = self.jobs.get()
            replies: list = []
            try:
                while msg is not None:
                    self.running = msg.type == protocol.PARAMS
                    try:
                        replies = self.worker.handle(msg, self.talk.send_from_job)
                    finally:
                        self.running = False
                    if msg.type != protocol.PARAMS:
                        break
                    self.talk.answered_one()
                    msg = self.talk.next_job()
                self.result = (replies, None)
            except BaseException as e:  # handed to the talking thread, which raises it
                self.result = ([], e)
            os.write(self.wake_w, b".")


class Talk:
    """The talking side of `serve`: the connection to the server, what it has said, and when.

    A worker that a server has welcomed and that then loses it (silent for --timeout, or the
    connection drops) goes back to saying HELLO on a fresh Link, if the job can bring its server
    back (--checkpoint-dir and --max-restarts above 0: the launcher restarts a dead server from its
    newest checkpoint, at the same address). It gives up after --join-timeout with ServerSilent.
    Each Link is a generation: an answer computed for an older one is dropped, never sent on.
    """

    def __init__(self, worker: Worker, endpoint: str, keys: Keys, join_timeout: float) -> None:
        self.spin_s = spin_seconds(os.environ.get(SPIN_ENV))  # checked before anything is made
        self.worker, self.endpoint, self.keys, self.join_timeout = worker, endpoint, keys, join_timeout
        if endpoint.startswith("ipc://"):  # the server's private folder: its shared memory is there
            worker.folder = os.path.dirname(endpoint.removeprefix("ipc://"))
        self.context = zmq.Context()
        # ZeroMQ sockets are not thread-safe: the compute thread sends a job's GRADS on the socket
        # itself, so every use of it holds this lock, and the socket is out of the poll while a
        # job computes (run)
        self.lock = threading.Lock()
        self.closing = False
        self.polled: list = []  # the Link's sources in this thread's poll (_listen)
        self.compute = ComputeThread(worker, self)
        self.poller = zmq.Poller()
        self.poller.register(self.compute.wake_r, zmq.POLLIN)
        self.link: Link | None = None
        self.generation = 0  # one per Link
        self.job_generation = 0  # the Link the compute thread's current job came in on
        self.computing = False  # the compute thread runs gradient jobs (and fetches the next ones)
        self.rejoining = False  # a server welcomed this worker, then went away
        self.may_rejoin = False  # the job's server can come back (from the welcome's config)
        self.linger = 0.0  # seconds the last message may take to leave when the socket closes
        try:
            self._connect()
        except zmq.ZMQError:
            self.context.term()
            raise

    def _connect(self) -> None:
        """A fresh Link; not welcomed yet: HELLO every second until `join_timeout`."""
        with self.lock:
            self._relink()

    def _relink(self) -> None:
        if self.link is not None:
            self._listen(False)  # else a job is computing, and the socket is out of the poll (run)
            self.poller.unregister(self.link.monitor)
            self.link.close()
        self.link = Link(self.context, self.endpoint, self.keys, self.join_timeout)
        self._listen(True)  # the poll wakes this thread for the socket (see run)
        self.poller.register(self.link.monitor, zmq.POLLIN)
        self.generation += 1
        self.todo: deque[Message] = deque()  # what the server sent, for the compute thread
        self.welcomed = False
        self.answered = 0  # PARAMS of this Link finished
        self.timeout, self.interval = self.join_timeout, HELLO_INTERVAL_S
        self.heard = self.beat_due = time.monotonic()
        self.beat_progress = -1

    def send(self, frames: Sequence[Any]) -> None:
        with self.lock:
            self._send(frames)

    def send_from_job(self, frames: list) -> None:
        """Send a bucket's GRADS from the compute thread, unless the job came in on an older Link
        (its server is gone)."""
        with self.lock:
            if self.job_generation == self.generation:
                self._send(frames)

    def _listen(self, on: bool) -> None:
        """Put the Link's sources in this thread's poll, or take them out. Under the lock."""
        for source in self.polled:
            self.poller.unregister(source)
        self.polled = self.link.sources() if on else []
        for source in self.polled:
            self.poller.register(source, zmq.POLLIN)
        self.listening = on

    def _send(self, frames: Sequence[Any]) -> None:
        try:
            self.link.send(frames)
        except zmq.Again:
            raise ConnectionError(f"cannot send to the server at {self.endpoint}: nothing leaves") from None

    def answered_one(self) -> None:
        """On the compute thread: a gradient job has sent everything (the heartbeats say so)."""
        with self.lock:
            if self.job_generation == self.generation:
                self.answered += 1

    def next_job(self) -> Message | None:
        """On the compute thread, after a gradient job: make the next batch, taking what arrives
        meanwhile, and return the next PARAMS as soon as it is here (without waking the talking
        thread, which leaves the socket alone while the compute thread holds it); None hands the
        socket back: something else came, the server stopped this worker, or the Link changed."""
        generation, found = self.job_generation, []

        def look(timeout_ms: int) -> bool:
            """Whether the wait is over: a job, or a reason to hand back, in `found`."""
            with self.lock:
                try:  # everything that has come (UPDATEs before the job), waiting for the first
                    while not self.todo and self._current(generation) and self.link.poll(timeout_ms):
                        self._take()  # a job goes to todo; the rest is dealt with there
                        timeout_ms = 0
                except zmq.ZMQError:  # the socket was closed under us: the worker is ending
                    found.append(None)
                    return True
                if not self._current(generation) or self.worker.stopped:
                    found.append(None)
                elif self.todo:
                    job = self.todo.popleft() if self.todo[0].type == protocol.PARAMS else None
                    found.append(job)  # a WELCOME is the talking thread's
                return bool(found)

        failed: list[BaseException] = []

        def until() -> bool:  # asked between the shards it prepares
            try:
                return look(0)
            except BaseException as e:  # raised below, not taken for a failure to prepare
                failed.append(e)
                return True

        try:  # only a head start: the job makes what is not ready itself
            self.worker.prepare_next(until=until)
        except Exception as e:
            log.warning("worker %d: could not prepare the next batch: %s", self.worker.rank, e)
        if failed:
            raise failed[0]
        spin_end = time.perf_counter() + self._spin()  # poll a while: a sleeping core wakes slowly
        while not found and time.perf_counter() < spin_end:
            if not look(0):
                os.sched_yield()  # the server, or another thread here, may want this core
        while not found:
            look(FETCH_SLICE_MS)
        return found[0]

    def _spin(self) -> float:
        """Seconds the compute thread polls for its next PARAMS before it sleeps: as
        $NUMPY_CNN_SPIN_US says (each launch sets it for its machine), else as if every worker of
        the job shared this machine (config.spin_for)."""
        if self.spin_s is not None:
            return self.spin_s
        config = self.worker.config
        return spin_for(config.workers) if config is not None else 0.0

    def _current(self, generation: int) -> bool:
        return self.generation == generation and not self.closing

    def close(self) -> None:
        self.closing = True  # the compute thread lets go of the socket within FETCH_SLICE_MS
        with self.lock:
            self.link.close(self.linger)
        self.context.term()

    def _lost(self, why: str) -> None:
        """The server that welcomed this worker is gone: say HELLO to the one replacing it, or give up."""
        if not self.may_rejoin:
            raise ServerSilent(why)
        log.warning(
            "worker %d: %s; saying HELLO until a server welcomes it back (up to %g s)",
            self.worker.rank,
            why,
            self.join_timeout,
        )
        self.rejoining = True
        self._connect()

    def run(self) -> None:
        worker, compute = self.worker, self.compute
        while not worker.stopped:
            # a job's result comes after all it sent: look at it first, then send what it sent
            # (each bucket's gradient went out from the compute thread as soon as it was ready)
            if compute.busy and compute.result is not None:
                try:
                    replies = compute.take()  # the compute thread's errors are raised here
                except agreement.Disagreement as e:  # tell the server why, then end
                    self.send(protocol.encode(protocol.REFUSE, rank=worker.rank, reason=str(e)))
                    self.linger = 1.0
                    raise
                if self.job_generation == self.generation:  # the setup's READY
                    for frames in replies:
                        self.send(frames)
                    if worker.lane is not None:  # after READY: the server claims the lane as it reads it
                        with self.lock:
                            self.link.adopt(worker.lane)
                            self._listen(self.listening)
                elif worker.lane is not None:  # for an older Link's server, gone
                    worker.lane.close()
                worker.lane = None  # the Link owns it now
            # While the compute thread runs gradient jobs, the socket is out of the poll: the
            # compute thread sends on it, and takes its next job off it (next_job). This thread
            # reads it only when it wakes anyway (a heartbeat due): every wake-up takes the
            # interpreter from the computation, and a computation that hangs must not keep a STOP
            # from being read.
            job = self.todo[0] if not compute.busy and self.todo else None
            quiet = (compute.busy and self.computing) or (job is not None and job.type == protocol.PARAMS)
            # the lane's end stays readable: out of the poll (the talking thread's alone)
            if quiet == self.listening or (self.listening and len(self.polled) > len(self.link.sources())):
                with self.lock:
                    self._listen(not quiet)
            if job is not None:  # out of the poll first: the job may send at once
                self.todo.popleft()
                self.computing = job.type == protocol.PARAMS
                self.job_generation = self.generation
                compute.submit(job)
            while quiet and self._waiting() and not worker.stopped:
                self._receive()
            now = time.monotonic()
            if now >= self.beat_due:
                if not self.welcomed:
                    self.send(worker.hello())  # again and again: the rank may not be free yet
                elif not (compute.running and worker.progress == self.beat_progress):
                    self.send(protocol.encode(protocol.HEARTBEAT, rank=worker.rank, answered=self.answered))
                self.beat_progress, self.beat_due = worker.progress, now + self.interval
            if now - self.heard > self.timeout:
                if self.welcomed:
                    silent = f"has not said anything for {self.timeout:g} s: it is gone or stuck"
                    self._lost(f"the server at {self.endpoint} {silent}")
                    continue
                if self.rejoining:
                    raise ServerSilent(
                        f"the server at {self.endpoint} went away, and none welcomed this worker back "
                        f"within {self.timeout:g} s"
                    )
                raise TimeoutError(
                    f"the server at {self.endpoint} did not welcome this worker in {self.timeout:g} s"
                )
            wait = max(0.0, min(self.beat_due, self.heard + self.timeout) - now)
            ready = dict(self.poller.poll(wait * 1000 + 1))
            if compute.wake_r in ready:
                compute.woken()  # what woke it is handled at the top of the loop
            if any(source in ready for source in self.polled):
                self._receive()
            # without a way back for the server, a dropped connection is left to ZeroMQ to mend
            elif self._dropped(self.link.monitor in ready) and self.welcomed and self.may_rejoin:
                while self._waiting() and not worker.stopped:  # what it said before it went
                    self._receive()  # (a STOP, at the end of the job)
                if not worker.stopped:
                    self._lost(f"the connection to the server at {self.endpoint} dropped")

    def _dropped(self, monitor: bool) -> bool:
        """Whether the connection has dropped: the monitor says so (`monitor`: it has news), or the
        server closed the lane."""
        return (monitor and self.link.dropped()) or self.link.lane_ended

    def _waiting(self) -> bool:
        with self.lock:
            return self.link.poll(0)

    def _receive(self) -> None:
        with self.lock:
            self._take()

    def _take(self) -> None:
        """Receive one message and act on it, the lock held (either thread): a job (WELCOME,
        PARAMS) goes to `todo`, what needs no computing is handled at once."""
        frames = self.link.receive()
        if frames is None:  # the lane's end, or nothing after all
            return
        self.heard = time.monotonic()
        try:
            msg = protocol.decode(frames)
        except ProtocolError as e:
            log.warning("worker %d: rejected a message from the server: %s", self.worker.rank, e)
            return
        if msg.type == protocol.WELCOME and not self.welcomed:
            try:  # from now on, the job's timeout, as the server counts it
                config = JobConfig.from_dict(msg["config"])
            except (TypeError, ValueError) as e:
                raise ProtocolError(f"bad job config from the server: {e}") from None
            self.timeout = config.timeout
            self.interval = self.timeout / protocol.HEARTBEATS_PER_TIMEOUT
            self.may_rejoin = bool(config.checkpoint_dir) and config.max_restarts > 0
            if self.rejoining:
                log.info("worker %d: welcomed back by the server at %s", self.worker.rank, self.endpoint)
            self.welcomed = True
            self.todo.append(msg)
        elif msg.type == protocol.PARAMS:
            self.todo.append(msg)
        else:
            try:
                self.worker.handle(msg)  # UPDATE, HEARTBEAT, STOP: nothing to compute
            except ProtocolError as e:
                log.warning("worker %d: rejected a message from the server: %s", self.worker.rank, e)


def serve(worker: Worker, endpoint: str, keys: Keys, join_timeout: float) -> None:
    """Run `worker` over a CURVE DEALER socket connected to the server until it is told to stop.

    This thread only talks: it sends HELLO every second until welcomed (giving up after
    `join_timeout`), then heartbeats, and notices a server silent for the job's --timeout, which
    the welcome carries, or a dropped connection; then it says HELLO again if the job's server can
    come back (see Talk). The work (setup, gradients) runs on one compute thread; an error there
    ends the worker. While a gradient is being computed, a heartbeat goes out only if a
    micro-shard has finished since the last one, so a computation that hangs goes silent like a
    dead process does. Each heartbeat says how many PARAMS this worker has answered, so the
    server can tell an answer it rejected from one still being computed.
    """
    talk = Talk(worker, endpoint, keys, join_timeout)
    try:
        talk.run()
    finally:
        talk.close()
