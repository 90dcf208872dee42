"""ParameterServer: holds the model's Tensor list and Adam, and runs the synchronous steps.

One step: send the parameters to every worker, take each worker's subtree sums of the gradient
(StepLedger keeps track of who owes what), add them up the fixed shard tree, run Adam, bump the
version. `launch` runs one in a process of its own, or, with --single-process, in itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from numpy_cnn.data import MNIST, global_batch, load, steps_per_epoch
from numpy_cnn.metrics import epoch_record, evaluate, format_record
from numpy_cnn.models import build, input_shape, outputs
from numpy_cnn.optim import Adam
from numpy_cnn.runbook import RunBook
from numpy_cnn.shards import Node
from numpy_cnn.steplog import StepLog
from numpy_cnn.trace import OFF

from . import agreement, protocol
from .config import JobConfig
from .ledger import StepLedger
from .members import DEBUGGER_HINT, Member, WorkerLost
from .protocol import HEARTBEATS_PER_TIMEOUT, Message, ProtocolError
from .ranks import plan, share
from .stats import EpochStats, boot_id, format_timing
from .tracing import SERVER, process_trace, traced_events
from .transport import Transport

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
        self.ledger = StepLedger(config.shards)  # the current step: who owes what, what has come in
        self.last_plan: dict[int, list[Node]] = {}  # who computed what at the last step
        self.events = events or (lambda event: None)
        self.log = log
        self.rejected = 0
        self.lost = 0  # workers dropped so far
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
            got = self.transport.recv(self.next_tick - now)
            if got is None:
                if not self.transport.parallel:  # in-process workers answer at once, or never
                    raise RuntimeError("the in-process workers did not answer")
                continue
            self._on_message(*got)

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
            reason = self._check_grads(peer, msg)
            if reason is None:
                self.ledger.accept(msg, len(self.params))
            else:
                self._reject(peer, reason)
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
            self.members[rank].ready = True
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
            welcome = protocol.encode(
                protocol.WELCOME, rank=rank, config=self.config.to_dict(), expect=self.identity
            )
            self._send(rank, welcome)

    def _lose(self, rank: int, why: str, hint: str = "") -> None:
        """Drop worker `rank`; its unfinished nodes go to the live workers (or the job stops)."""
        member = self.members.pop(rank)
        del self.ranks[member.peer]
        self.lost += 1
        try:  # if it is only stuck, tell it to go, so it never comes back as a stale peer
            self.transport.send(member.peer, protocol.encode(protocol.STOP, reason=f"dropped: {why}"))
        except ConnectionError:
            pass
        log.warning("server: worker %d %s; dropped it at step %d%s", rank, why, self.step, hint)
        self.events({"event": "worker_lost", "rank": rank, "pid": member.pid, "reason": why})
        if self.config.on_worker_failure == "abort":
            raise WorkerLost(f"worker {rank} {why} at step {self.step} (--on-worker-failure abort){hint}")
        owed = self.ledger.owed_by(rank)
        if owed:
            self._hand_out(owed, self.ready_ranks())

    def _hand_out(self, nodes: list[Node], ranks: list[int]) -> None:
        """Have `ranks` compute `nodes` of this step, split evenly (no ranks: wait for one)."""
        self.ledger.release(nodes)
        ranks = [r for r in ranks if r in self.members and self.members[r].ready]
        if not ranks:
            self.ledger.assign(nodes, None)
            if self.stalled_since is None:
                self.stalled_since = time.monotonic()
            return
        for rank, part in share(nodes, ranks, self.config.shards).items():
            if rank not in self.members:  # lost while an earlier part was sent: pass its part on
                self._hand_out(part, self.ready_ranks())
                continue
            self.ledger.assign(part, rank)
            log.info("server: step %d: worker %d takes over micro-shards %s", self.step, rank, part)
            self._send_params(rank, part)  # if it fails, _lose hands `part` on with the rest

    def _send_params(self, rank: int, nodes: list[Node]) -> None:
        epoch, index = self.batch
        frames = protocol.encode(
            protocol.PARAMS,
            [p.data for p in self.params],
            step=self.step,
            version=self.version,
            epoch=epoch,
            index=index,
            nodes=[list(node) for node in nodes],
        )
        if rank in self.members:
            self.members[rank].asked += 1
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

    def _check_grads(self, peer: bytes, msg: Message) -> str | None:
        """Why this GRADS message is not an expected answer to the current step, or None if it is."""
        rank = self.ranks.get(peer)
        if rank is None:
            return "not a registered worker"
        if msg["rank"] != rank:
            return f"claims rank {msg['rank']} on the connection of rank {rank}"
        if msg["step"] != self.step or msg["version"] != self.version:
            return (
                f"step {msg['step']} version {msg['version']}, "
                f"expected step {self.step} version {self.version}"
            )
        reason = self.ledger.check(rank, msg, len(self.params))
        if reason is not None:
            return reason
        for i, a in enumerate(msg.arrays):
            p = self.params[i % len(self.params)]
            if a.shape != p.shape or a.dtype != p.dtype:
                return f"array {i} is {a.dtype} {a.shape}, expected {p.dtype} {p.shape}"
        return None

    # -- training -----------------------------------------------------------------------------

    def train_step(self, epoch: int, index: int, stats: EpochStats) -> None:
        """One synchronous step on global batch `index` of `epoch`; adds to `stats`."""
        sent, received = self.transport.sent_bytes, self.transport.received_bytes
        config = self.config
        n = len(
            global_batch(len(self.data.train), config.batch_size, config.seed, epoch, index, config.max_shift)
        )
        start, began = time.perf_counter(), time.monotonic()
        self.batch = (epoch, index)
        self.trace.phase("send parameters")
        ready = self.ready_ranks()
        work = plan(ready, config.workers, config.shards) if ready else {}
        self.ledger.start(n, work)
        if ready:
            if work != self.last_plan and self.step > 0:  # a worker is missing, or is back
                log.info("server: step %d: micro-shards by worker: %s", self.step, work)
            self.last_plan = work
        else:  # every worker is gone: the first to be ready again gets the whole batch
            self.stalled_since = time.monotonic()
        for rank, nodes in work.items():
            if rank in self.members:  # an earlier send in this loop may have found it gone
                self._send_params(rank, nodes)
        self.trace.phase("receive gradients")
        self._serve(lambda: self.ledger.complete)
        waited = time.perf_counter()
        self.trace.phase("sum")
        gradient = self.ledger.gradient()
        answers = self.ledger.answers
        if not all(np.isfinite(g).all() for g in gradient):  # a NaN or Inf anywhere reaches the root
            # a real worker's gradient blew up: no update can be trusted, stop before Adam
            bad = sorted({m["rank"] for m in answers if not all(np.isfinite(a).all() for a in m.arrays)})
            raise FloatingPointError(f"step {self.step}: worker(s) {bad} sent non-finite gradients")
        for p, g in zip(self.params, gradient):
            p.grad = g
        self.trace.phase("Adam")
        self.optimizer.lr = config.lr_at(self.step, self.per_epoch)
        self.optimizer.update()
        self.step += 1
        self.version += 1
        done = time.perf_counter()
        local = all(self.members[m["rank"]].boot == self.boot for m in answers if m["rank"] in self.members)
        intervals = [(m["started"], m["started"] + m["compute_s"]) for m in answers]
        stats.add_exposed(began, time.monotonic(), intervals if local and self.boot else None)
        computes = [m["compute_s"] for m in answers]
        compute = max(computes) if self.transport.parallel else sum(computes)
        stats.steps += 1
        stats.samples += n
        stats.loss += sum(m["loss"] for m in answers)
        stats.correct += sum(m["correct"] for m in answers)
        stats.compute += compute
        stats.comm += max(0.0, waited - start - compute)
        stats.update += done - waited
        stats.bytes += self.transport.sent_bytes - sent + self.transport.received_bytes - received

    def stop_workers(self, reason: str) -> None:
        for member in self.members.values():
            try:
                self.transport.send(member.peer, protocol.encode(protocol.STOP, reason=reason))
            except ConnectionError:
                pass  # already gone: nothing to stop

    def run(self) -> list[dict]:
        """Register the workers and train for the configured epochs; returns one record per epoch."""
        config = self.config
        self.trace = process_trace(config, "server", SERVER, "server")
        self.events = traced_events(self.trace, self.events)
        classes = outputs(config.model, self.data)
        book = RunBook(config, self.net, self.optimizer, self.per_epoch, self.log, self.shape, classes)
        steps = StepLog(config.log_every, lambda record: book.write("step", record))
        self.step = self.version = book.step
        if book.resumed_from is not None:
            self.events({"event": "resumed", "step": book.step, "checkpoint": str(book.resumed_from)})
        self.register()
        last_event = 0.0
        reason = protocol.FINISHED
        try:
            for epoch, indices in book.epochs():
                stats = EpochStats()
                start = time.perf_counter()
                for index in indices:
                    before = stats.totals()
                    self.trace.at_step(self.step + 1)
                    with self.trace.span("step", step=self.step + 1):
                        self.train_step(epoch, index, stats)
                    book.stepped(self.step, epoch, index + 1)
                    lr = config.lr_at(self.step - 1, self.per_epoch)
                    steps.add(self.step, epoch + 1, lr, **stats.since(before))
                    if time.monotonic() - last_event > 0.2 or index == indices.stop - 1:
                        last_event = time.monotonic()
                        self.events({"event": "step", "step": self.step, "epoch": epoch + 1})
                seconds = time.perf_counter() - start
                with self.trace.span("evaluate", always=True, epoch=epoch + 1):
                    test_acc = evaluate(self.net, self.data.test, self.shape, between=self.keep_alive)
                loss, train_acc = stats.loss / max(stats.samples, 1), stats.correct / max(stats.samples, 1)
                record = epoch_record(epoch + 1, self.step, loss, train_acc, test_acc, seconds, stats.samples)
                record.update(stats.timing())
                steps.flush()  # a step line never spans two epochs
                book.end_epoch(epoch, indices.stop, record)
                self.log(format_record(record, config.n_epochs) + "  " + format_timing(record))
                self.events({"event": "epoch", "record": record})
        except KeyboardInterrupt:
            reason = "interrupted"
            raise
        except BaseException as e:
            reason = f"the server stopped: {e}"
            raise
        finally:
            book.close()
            self.stop_workers(reason)  # on errors too: workers need not wait to time out
            self.trace.save()  # the launcher merges it with the other processes' parts
        self.events({"event": "trained", "step": self.step})  # a failure from here on loses no training
        book.save_weights()
        if self.rejected:
            log.warning("server: rejected %d messages in all", self.rejected)
        return book.history
