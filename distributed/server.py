"""ParameterServer: holds the model's Tensor list and Adam, and runs the synchronous steps.

One step: tell every worker which nodes of the shard tree to compute (with the parameters, to a
worker that does not hold them all yet); take each worker's subtree sums of the gradient bucket by
bucket as they are ready (StepLedger keeps track of who owes what); as soon as a bucket is in, add
it up the fixed shard tree, run Adam on it and send its new values to every worker, while the
workers still compute the buckets below; after the last bucket, bump the version. `launch` runs
one in a process of its own, or, with --single-process, in itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from numpy_cnn import buckets
from numpy_cnn.data import MNIST, global_batch, load, steps_per_epoch
from numpy_cnn.models import build, input_shape
from numpy_cnn.optim import Adam
from numpy_cnn.shards import Node
from numpy_cnn.trace import OFF

from . import accept, agreement, epochs, protocol
from .config import JobConfig, machine_cores, server_poll
from .ledger import Owed, StepLedger
from .members import DEBUGGER_HINT, Member, WorkerLost
from .memory import ServerFiles
from .protocol import HEARTBEATS_PER_TIMEOUT, Message, ProtocolError
from .ranks import plan, share
from .stats import EpochStats, boot_id, taken_after
from .transport import Transport
from .updates import BucketUpdates

log = logging.getLogger("numpy_cnn.distributed.server")


class ParameterServer:
    """The Tensor list, Adam, the registered workers, and the step/version counters.

    Everything happens on one thread, in `_serve`: it takes messages as they come (registrations,
    heartbeats, gradients) and, every heartbeat interval, sends heartbeats and drops any worker
    silent for `timeout` seconds. A dropped worker's micro-shards go to the live ones within the
    same step; the fixed shard tree makes the sum, and so the weights, the same bits.
    """

    def __init__(
        self,
        config: JobConfig,
        transport: Transport,
        data: MNIST | None = None,
        events: Callable[[dict], None] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.config = config.check()
        self.transport = transport
        self.data = data if data is not None else load(config.dataset, config.data_dir)
        self.net = build(config.model, seed=config.seed, dtype=config.dtype, data=self.data)
        self.params = self.net.parameters
        self.optimizer = Adam(self.params, lr=config.lr)
        # every worker derives the same plan from its net and this config (sent in WELCOME)
        self.buckets = buckets.plan(self.net, config.bucket_cap)
        self.layout = buckets.Layout.of(self.net, self.buckets)  # a bucket: one flat span, one frame
        # the parameters in a file the workers on this machine map (memory.py), where there are any
        self.files = ServerFiles(transport, self.layout, config.shards, self.params[0].dtype)
        self.updates = BucketUpdates(self.optimizer, self.layout, self.files.buffers)
        self.update_s = 0.0  # this step's time in summing, Adam and sending updates
        self.sent_at = [0.0] * len(self.buckets)  # when each bucket's update went out, this step
        self.last_start: tuple[int, float] | None = None  # the step before this one, and its start
        self.begun: tuple[int, int, int] | None = None  # (step, epoch, index) whose PARAMS went out
        self.opened: tuple = ()  # what _begin noted of that step for its statistics
        self.aborted: WorkerLost | None = None  # raised by the next train_step
        self.identity = agreement.identity(self.net, config.dataset)  # what every worker must share
        self.boot = boot_id()
        self.shape = input_shape(config.model, self.data)
        self.per_epoch = steps_per_epoch(len(self.data.train), config.batch_size)
        self.step = 0  # optimizer steps taken
        self.version = 0  # parameter updates applied; workers must answer the current one
        self.members: dict[int, Member] = {}  # rank -> registered worker
        self.ranks: dict[bytes, int] = {}  # the transport's id of a connection -> its rank
        self.interval = config.timeout / HEARTBEATS_PER_TIMEOUT
        self.next_tick = 0.0
        self.stalled_since: float | None = None  # when work was left with no live worker to do it
        self.batch = (0, 0)  # (epoch, index) of the current step
        self.ledger = StepLedger(config.shards, self.buckets)  # this step: who owes what, what came in
        self.last_plan: dict[int, list[Node]] = {}  # who computed what at the last step
        self.events = events or (lambda event: None)
        self.log = log
        self.rejected, self.lost = 0, 0  # messages rejected, workers dropped so far
        self.poll_s, self.cores = server_poll(transport.parallel), machine_cores()  # see _poll
        self.trace = OFF  # --trace: run() makes the real one

    @property
    def total_steps(self) -> int:
        total = self.per_epoch * self.config.n_epochs
        return total if self.config.max_steps is None else min(total, self.config.max_steps)

    def ready_ranks(self) -> list[int]:
        return sorted(r for r, m in self.members.items() if m.ready)

    # -- the message loop ---------------------------------------------------------------------

    def _serve(self, done: Callable[[], bool]) -> None:
        """Take messages and keep time until `done()`; raises if the job cannot go on."""
        while not done():
            now = time.monotonic()
            if now >= self.next_tick:
                self.next_tick = now + self.interval
                self._tick(now)
                continue
            got = self.transport.recv(self.next_tick - now, self._poll(now))
            if got is not None:
                self._on_message(*got)
            elif not self.transport.parallel:  # in-process workers answer at once, or never
                raise RuntimeError("the in-process workers did not answer")

    def _poll(self, now: float) -> float:
        """Seconds to poll before sleeping for the next message (config.server_poll)."""
        first = self.ledger.first_done
        if first is None or now >= first + self.poll_s:  # (poll_s 0: never)
            return 0.0
        here = {r for r, m in self.members.items() if m.boot == self.boot}  # this machine's workers
        busy = len(here) > self.cores or len(here & self.ledger.computing()) >= self.cores
        return 0.0 if busy else first + self.poll_s - now

    def _on_message(self, peer: bytes, frames: list) -> None:
        try:
            msg = protocol.decode(frames)
        except ProtocolError as e:
            self._reject(peer, str(e))
            return
        rank = self.ranks.get(peer)
        if rank is not None:
            self.members[rank].heard = time.monotonic()
        if msg.type == protocol.HELLO:
            self._hello(peer, msg)
        elif msg.type == protocol.GRADS:
            reason = accept.why_not(self, peer, msg)
            if reason is not None:
                self._reject(peer, reason)
            elif self.ledger.complete(self.ledger.accept(msg)):
                self._reduce(msg["bucket"])
        elif msg.type not in (protocol.READY, protocol.HEARTBEAT, protocol.REFUSE):
            self._reject(peer, f"unexpected {msg.type} message")
        elif rank is None:
            self._reject(peer, f"{msg.type} message from a peer that is not a registered worker")
        elif msg["rank"] != rank:
            self._reject(peer, f"claims rank {msg['rank']} on the connection of rank {rank}")
        elif msg.type == protocol.HEARTBEAT:
            self._heartbeat(rank, msg["answered"])
        elif msg.type == protocol.REFUSE:
            self._lose(rank, f"refused the job: {msg['reason'][:500]}")
        elif not self.members[rank].ready:
            if msg["lane"] and not self.transport.claim(peer, msg["lane"]):  # its messages' way from now on
                return self._lose(rank, "is ready, but its lane never came (lane.py)")
            self.members[rank].ready = True
            self.files.mapped(rank)
            self.members[rank].held = [-1] * len(self.buckets)
            self.stalled_since = None
            log.info("server: worker %d is ready", rank)
            orphans = self.ledger.owed_by(None)
            if orphans:
                self._hand_out(orphans, [rank])
        else:
            self._reject(peer, "a second READY")

    def _heartbeat(self, rank: int, answered: int) -> None:
        """A worker that has answered every PARAMS it was sent but still owes nodes never will."""
        member = self.members[rank]
        owed = self.ledger.owed_by(rank)
        # one connection delivers in order: its answers to those PARAMS arrived before this
        if owed and answered >= member.asked:
            self._lose(rank, f"answered all its work but still owes micro-shards {owed} (answers rejected)")

    def _reject(self, peer: bytes, reason: str) -> None:
        self.rejected += 1
        rank = self.ranks.get(peer)
        who = f"worker {rank}" if rank is not None else f"unknown peer {peer.hex()}"
        log.warning("server: rejected a message from %s: %s", who, reason)

    def keep_alive(self) -> None:
        """Heartbeats and liveness checks while the server is busy with something else."""
        now = time.monotonic()
        if now >= self.next_tick:
            self.next_tick = now + self.interval
            self._tick(now)

    def _tick(self, now: float) -> None:
        """Read what has queued up, drop silent workers, heartbeat the rest, check for stalls."""
        for _ in range(10_000):  # judge silence only on what has arrived (bounded: a flood waits)
            got = self.transport.recv(0.0)
            if got is None:
                break
            self._on_message(*got)
        if self.transport.parallel:  # in-process workers cannot die on their own
            for rank, member in list(self.members.items()):
                if now - member.heard > self.config.timeout:
                    silent = f"sent nothing for {self.config.timeout:g} s (no heartbeat)"
                    self._lose(rank, silent, DEBUGGER_HINT)
        for rank in list(self.members):
            if rank in self.members:
                self._send(rank, protocol.encode(protocol.HEARTBEAT, rank=rank, answered=0))
        self.events({"event": "alive"})  # the launcher's heartbeat: a server that stops sending is stuck
        if self.stalled_since is not None and now - self.stalled_since > self.config.join_timeout:
            raise TimeoutError(
                f"step {self.step}: no worker has been ready to compute it for {self.config.join_timeout:g} s"
            )

    def _send(self, rank: int, frames: list) -> bool:
        if rank not in self.members:
            return False  # dropped while this was being prepared
        try:
            self.transport.send(self.members[rank].peer, frames)
            return True
        except ConnectionError as e:
            self._lose(rank, f"is unreachable ({e})")
            return False

    # -- workers joining and leaving ----------------------------------------------------------

    def _hello(self, peer: bytes, msg: Message) -> None:
        rank = msg["rank"]
        if self.ranks.get(peer) == rank:
            return  # a repeated HELLO from the connection that already holds the rank: in flight
        if not 0 <= rank < self.config.workers:
            self._reject(peer, f"HELLO for unknown rank {rank}")
        elif rank in self.members or peer in self.ranks:
            self._reject(peer, f"HELLO for rank {rank}, which is already registered")
        else:
            self.members[rank] = Member(rank, peer, msg["pid"], heard=time.monotonic(), boot=msg["boot"])
            self.ranks[peer] = rank
            log.info("server: worker %d connected (pid %d)", rank, msg["pid"])
            config = self.config.to_dict()
            if not (self.boot and msg["boot"] == self.boot):  # another machine: not on the trace's clock
                config.update(trace=None, trace_steps=None)
            memory = self.files.offer(rank, peer)  # shared memory, for a worker on this machine
            welcome = protocol.encode(
                protocol.WELCOME, rank=rank, config=config, expect=self.identity, memory=memory
            )
            self._send(rank, welcome)

    def _lose(self, rank: int, why: str, hint: str = "") -> None:
        """Drop worker `rank`; its unfinished nodes go to the live workers (or the job stops)."""
        member = self.members.pop(rank)
        del self.ranks[member.peer]
        self.files.drop(rank)
        self.lost += 1
        try:  # if it is only stuck, tell it to go, so it never comes back as a stale peer
            self.transport.send(member.peer, protocol.encode(protocol.STOP, reason=f"dropped: {why}"))
        except ConnectionError:
            pass
        self.transport.forget(member.peer)
        log.warning("server: worker %d %s; dropped it at step %d%s", rank, why, self.step, hint)
        self.events({"event": "worker_lost", "rank": rank, "pid": member.pid, "reason": why})
        if self.config.on_worker_failure == "abort":
            raise WorkerLost(f"worker {rank} {why} at step {self.step} (--on-worker-failure abort){hint}")
        owed = self.ledger.owed_by(rank)
        if owed:
            self._hand_out(owed, self.ready_ranks())

    def _hand_out(self, owed: Owed, ranks: list[int]) -> None:
        """Have `ranks` compute the owed buckets of nodes of this step, split evenly (no ranks:
        wait for one). Each takes them with this step's parameters, whatever it holds."""
        for group, nodes in owed:
            self.ledger.release(group, nodes)
        ranks = [r for r in ranks if r in self.members and self.members[r].ready]
        if not ranks:
            for group, nodes in owed:
                self.ledger.assign(group, nodes, None)
            if self.stalled_since is None:
                self.stalled_since = time.monotonic()
            return
        for group, nodes in owed:
            for rank, part in share(nodes, ranks, self.config.shards).items():
                if rank not in self.members:  # lost while an earlier part was sent: pass its part on
                    self._hand_out([(group, part)], self.ready_ranks())
                    continue
                self.ledger.assign(group, part, rank)
                log.info(
                    "server: step %d: worker %d takes over buckets %s of micro-shards %s",
                    self.step,
                    rank,
                    list(group),
                    part,
                )
                every = range(len(self.buckets))  # the values the step started from, whatever it holds
                self._send_params(rank, part, group, every)  # if it fails, _lose hands it on

    def _send_params(
        self, rank: int, nodes: list[Node], group: tuple[int, ...], carried: Sequence[int]
    ) -> None:
        """Ask `rank` for these buckets of these nodes, with the values of this step's version of
        the `carried` buckets (the old values of those already updated this step)."""
        epoch, index = self.batch
        member = self.members.get(rank)
        updated = self.ledger.updated
        shared = rank in self.files.grads  # it maps the parameters: no arrays
        frames = protocol.encode(
            protocol.PARAMS,
            [] if shared else self.updates.before(updated, carried),
            sides=self.updates.sides(updated, carried) if shared else [],
            step=self.step,
            version=self.version,
            epoch=epoch,
            index=index,
            nodes=[list(node) for node in nodes],
            buckets=list(group),
            carried=list(carried),
        )
        if member is not None:
            member.asked += 1
            for b in carried:  # the worker keeps what it held newer (Worker._weights): so does its record
                member.held[b] = max(member.held[b], self.version)
        self._send(rank, frames)

    def register(self) -> None:
        """Welcome every rank with the job's config, and wait until each has built its replica."""
        started = time.monotonic()

        def done() -> bool:
            if len(self.ready_ranks()) == self.config.workers:
                return True
            if time.monotonic() - started > self.config.join_timeout:
                raise TimeoutError(
                    f"only workers {self.ready_ranks()} of {self.config.workers} were ready "
                    f"within {self.config.join_timeout:g} s"
                )
            return False

        self._serve(done)

    # -- training -----------------------------------------------------------------------------

    def train_step(
        self, epoch: int, index: int, stats: EpochStats, following: tuple[int, int] | None = None
    ) -> None:
        """One synchronous step on global batch `index` of `epoch`; adds to `stats`. With
        `following` (epoch, index), the next step's PARAMS go out as soon as this step's last
        bucket is updated, before this step's bookkeeping and the caller's: the workers' forward
        pass waits for nothing else. Nothing changes the parameters or Adam until the next call
        takes messages again, so a checkpoint between the two holds this step's state."""
        if self.aborted is not None:  # sending this step's PARAMS lost a worker (abort)
            raise self.aborted
        if self.begun != (self.step, epoch, index):
            self._begin(epoch, index)
        self.updates.begin(self.config.lr_at(self.step, self.per_epoch))  # Adam: bucket by bucket (_reduce)
        self.trace.phase("receive gradients")  # each bucket's sum, Adam and update inside (_reduce)
        self._serve(lambda: self.ledger.finished)
        self.trace.phase(None)
        end, ended = time.perf_counter(), time.monotonic()
        moved = self.transport.sent_bytes + self.transport.received_bytes
        n, start, began, before, sent, received = self.opened
        if self.trace.active:  # from its PARAMS to its last update (the next step's begin after it)
            self.trace.complete("step", began, ended, step=self.step + 1)
        self.step += 1
        self.version += 1
        ledger, sent_at, update_s = self.ledger, list(self.sent_at), self.update_s
        answers, timing = ledger.answers, (ledger.ready, ledger.came_in, sent_at)  # start() makes new ones
        local = all(self.members[m["rank"]].boot == self.boot for m in answers if m["rank"] in self.members)
        if following is not None and self.transport.parallel:  # in-process workers would compute it now
            try:
                self._begin(*following)
            except WorkerLost as e:  # raised by the next call: this step is booked (and checkpointed)
                self.aborted = e
        clock = (began, ended) if local and self.boot else None  # the workers' clock is the server's
        taken = taken_after(answers, before, self.step - 1) if clock else None
        stats.add_step(n, answers, (start, end), clock, update_s, self.transport.parallel, timing, taken)
        stats.bytes += moved - sent - received

    def _begin(self, epoch: int, index: int) -> None:
        """Start step `self.step` on batch `index` of `epoch`: plan it, and send every worker its
        PARAMS (with the parameters it lacks)."""
        config = self.config
        batch = global_batch(
            len(self.data.train), config.batch_size, config.seed, epoch, index, config.max_shift
        )
        n, self.begun = len(batch), (self.step, epoch, index)
        start, began = time.perf_counter(), time.monotonic()
        self.trace.at_step(self.step + 1)
        self.trace.phase("send parameters")
        transport = self.transport
        self.opened = (n, start, began, self.last_start, transport.sent_bytes, transport.received_bytes)
        self.last_start = (self.step, began)
        self.batch = (epoch, index)
        self.update_s = 0.0
        ready = self.ready_ranks()
        work = plan(ready, config.workers, config.shards) if ready else {}
        self.ledger.start(n, work)
        if ready:
            if work != self.last_plan and self.step > 0:  # a worker is missing, or is back
                log.info("server: step %d: micro-shards by worker: %s", self.step, work)
            self.last_plan = work
        else:  # every worker is gone: the first to be ready again gets the whole batch
            self.stalled_since = time.monotonic()
        every = tuple(range(len(self.buckets)))
        for rank, nodes in work.items():
            if rank in self.members:  # an earlier send in this loop may have found it gone
                # the last step's last bucket, and all of them for a worker that is new or was lent
                lacks = [b for b, h in enumerate(self.members[rank].held) if h != self.version]
                self._send_params(rank, nodes, every, lacks)
        self.trace.phase(None)

    def _reduce(self, bucket: int) -> None:
        """Every node of `bucket` is in: sum it up the tree, check it, run Adam on it alone and send
        the new values to every ready worker at once."""
        with self.trace.span("bucket", bucket=bucket):
            self._update_bucket(bucket)

    def _update_bucket(self, bucket: int) -> None:
        began = time.perf_counter()
        self.trace.phase("sum")
        gradient = self.ledger.gradient(bucket)
        if not np.isfinite(gradient).all():  # a NaN or Inf anywhere reaches the root
            # a real worker's gradient blew up: no update can be trusted; undo this step's others
            self.updates.roll_back(self.ledger.updated)
            self.ledger.updated = set()
            bad = self.ledger.nonfinite_ranks(bucket)
            raise FloatingPointError(f"step {self.step}: worker(s) {bad} sent non-finite gradients")
        self.trace.phase("Adam")
        new = self.updates.apply(bucket, gradient)
        self.ledger.updated.add(bucket)
        self.trace.phase("send update")
        # the step's last bucket: nothing computes meanwhile, and the next PARAMS carries it (one
        # message fewer between a step's last gradient and the next step's forward pass)
        if not self.ledger.finished:
            version = self.version + 1
            fields = dict(step=self.step, version=version, bucket=bucket)
            frames = {  # with the values, or naming the buffer that holds them
                False: protocol.encode(protocol.UPDATE, [new], side=-1, **fields),
                True: protocol.encode(protocol.UPDATE, side=self.updates.side[bucket], **fields),
            }
            for rank in self.ready_ranks():
                if self._send(rank, frames[rank in self.files.grads]) and rank in self.members:
                    self.members[rank].held[bucket] = version
        self.sent_at[bucket] = time.monotonic()
        self.update_s += time.perf_counter() - began

    def stop_workers(self, reason: str) -> None:
        for member in self.members.values():
            try:
                self.transport.send(member.peer, protocol.encode(protocol.STOP, reason=reason))
            except ConnectionError:
                pass  # already gone: nothing to stop

    def run(self) -> list[dict]:
        """Register the workers and train for the configured epochs; returns one record per epoch
        (the run around the steps, its records, trace and end, is in epochs.py)."""
        return epochs.run(self)
