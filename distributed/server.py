"""ParameterServer: holds the model's Tensor list and Adam, and runs the synchronous steps.

One step: send the parameters to every worker, take each worker's subtree sums of the gradient,
add them up the fixed shard tree, run Adam, bump the version. `python -m distributed.server` runs
one as a process (`launch` starts it); `launch --single-process` runs it in the launcher itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from numpy_cnn import checkpoint
from numpy_cnn.data import MNIST, load, steps_per_epoch
from numpy_cnn.metrics import evaluate
from numpy_cnn.models import build, input_shape
from numpy_cnn.optim import Adam
from numpy_cnn.shards import Node, cover, shard_bounds, tree_sum, worker_shards
from numpy_cnn.train import epoch_record, format_record

from . import protocol
from .config import JobConfig
from .protocol import Message, ProtocolError

log = logging.getLogger("distributed.server")


@dataclass
class EpochStats:
    """Sums over an epoch's steps: training loss and accuracy, and where each step's time went."""

    steps: int = 0
    samples: int = 0
    loss: float = 0.0
    correct: int = 0
    compute: float = 0.0  # the workers' forward/backward (the slowest worker's, when in parallel)
    comm: float = 0.0  # the rest of the wait for gradients: encoding, the wire, decoding, stragglers
    update: float = 0.0  # summing the tree and Adam
    bytes: int = 0  # array and header frames sent and received by the server
    extra: dict = field(default_factory=dict)

    def timing(self) -> dict:
        """Per-step means, in ms (they add up to the step time) and bytes."""
        n = max(self.steps, 1)
        ms = {k: round(1000 * getattr(self, k) / n, 3) for k in ("compute", "comm", "update")}
        return {
            "step_ms": round(sum(ms.values()), 3),
            "compute_ms": ms["compute"],
            "comm_ms": ms["comm"],
            "update_ms": ms["update"],
            "bytes_per_step": round(self.bytes / n),
        }


class ParameterServer:
    """The Tensor list, Adam, the registered workers, and the step/version counters."""

    def __init__(
        self,
        config: JobConfig,
        transport,
        data: MNIST | None = None,
        events: Callable[[dict], None] | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.config = config.check()
        self.transport = transport
        self.data = data if data is not None else load(config.dataset, config.data_dir)
        self.net = build(config.model, seed=config.seed, dtype=config.dtype)
        self.params = self.net.parameters
        self.optimizer = Adam(self.params, lr=config.lr)
        self.shape = input_shape(config.model)
        self.per_epoch = steps_per_epoch(len(self.data.train), config.batch_size)
        self.step = 0  # optimizer steps taken
        self.version = 0  # parameter updates applied; workers must answer the current one
        self.peers: dict[int, bytes] = {}  # rank -> the transport's id of its connection
        self.ranks: dict[bytes, int] = {}
        w, s = config.workers, config.shards
        self.covers = {r: cover(*worker_shards(r, w, s), s) for r in range(w)}
        self.scratch: dict[Node, list[np.ndarray]] = {}  # the tree's inner sums, reused every step
        self.events = events or (lambda event: None)
        self.echo = echo
        self.rejected = 0

    @property
    def total_steps(self) -> int:
        total = self.per_epoch * self.config.n_epochs
        return total if self.config.max_steps is None else min(total, self.config.max_steps)

    # -- messages -----------------------------------------------------------------------------

    def _receive(self, deadline: float) -> tuple[bytes, Message] | None:
        """The next well-formed message, or None at the deadline; malformed ones are logged."""
        while True:
            got = self.transport.recv(max(0.0, deadline - time.monotonic()))
            if got is None:
                return None
            peer, frames = got
            try:
                return peer, protocol.decode(frames)
            except ProtocolError as e:
                self._reject(peer, str(e))

    def _reject(self, peer: bytes, reason: str) -> None:
        self.rejected += 1
        rank = self.ranks.get(peer)
        who = f"worker {rank}" if rank is not None else f"unknown peer {peer.hex()}"
        log.warning("server: rejected a message from %s: %s", who, reason)

    def register(self) -> None:
        """Welcome every rank with the job's config, and wait until each has built its replica."""
        deadline = time.monotonic() + self.config.timeout
        ready: set[int] = set()
        while len(ready) < self.config.workers:
            got = self._receive(deadline)
            if got is None:
                raise TimeoutError(
                    f"only workers {sorted(ready)} of {self.config.workers} were ready "
                    f"within {self.config.timeout:g} s"
                )
            peer, msg = got
            rank = msg.fields.get("rank")
            if msg.type == protocol.READY and self.ranks.get(peer) == rank and rank not in ready:
                ready.add(rank)
            elif msg.type != protocol.HELLO:
                self._reject(peer, f"{msg.type} message while workers register")
            elif not (isinstance(rank, int) and 0 <= rank < self.config.workers):
                self._reject(peer, f"unknown rank {rank}")
            elif rank in self.peers or peer in self.ranks:
                self._reject(peer, f"rank {rank} is already registered")
            else:
                self.peers[rank], self.ranks[peer] = peer, rank
                self.transport.send(
                    peer, protocol.encode(protocol.WELCOME, rank=rank, config=self.config.to_dict())
                )
                log.info("server: worker %d connected (pid %d)", rank, msg["pid"])

    def _check_grads(self, peer: bytes, msg: Message, pending: set[int], n: int) -> str | None:
        """Why this message is not an expected answer to the current step, or None if it is."""
        if msg.type != protocol.GRADS:
            return f"unexpected {msg.type} message during step {self.step}"
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
        if rank not in pending:
            return f"a second answer for step {self.step}"
        nodes = self.covers[rank]
        if msg["nodes"] != [list(node) for node in nodes]:
            return f"shard nodes {msg['nodes']}, expected {[list(node) for node in nodes]}"
        bounds = shard_bounds(n, self.config.shards)
        counts = [bounds[hi - 1][1] - bounds[lo][0] for lo, hi in nodes]
        if msg["counts"] != counts:
            return f"sample counts {msg['counts']}, expected {counts}"
        if len(msg.arrays) != len(nodes) * len(self.params):
            return f"{len(msg.arrays)} arrays, expected {len(nodes) * len(self.params)}"
        for i, a in enumerate(msg.arrays):
            p = self.params[i % len(self.params)]
            if a.shape != p.shape or a.dtype != p.dtype:
                return f"array {i} is {a.dtype} {a.shape}, expected {p.dtype} {p.shape}"
        return None

    # -- training -----------------------------------------------------------------------------

    def train_step(self, epoch: int, index: int, stats: EpochStats) -> None:
        """One synchronous step on global batch `index` of `epoch`; adds to `stats`."""
        w, sent, received = self.config.workers, self.transport.sent_bytes, self.transport.received_bytes
        n = batch_length(len(self.data.train), self.config.batch_size, index)
        start = time.perf_counter()
        frames = protocol.encode(
            protocol.PARAMS,
            [p.data for p in self.params],
            step=self.step,
            version=self.version,
            epoch=epoch,
            index=index,
        )
        for rank in range(w):
            self.transport.send(self.peers[rank], frames)
        parts: dict[Node, list[np.ndarray]] = {}
        pending, computes = set(range(w)), []
        deadline = time.monotonic() + self.config.timeout
        while pending:
            got = self._receive(deadline)
            if got is None:
                raise TimeoutError(
                    f"step {self.step}: no gradients from worker(s) {sorted(pending)} "
                    f"within {self.config.timeout:g} s"
                )
            peer, msg = got
            reason = self._check_grads(peer, msg, pending, n)
            if reason is not None:
                self._reject(peer, reason)
                continue
            rank = self.ranks[peer]
            pending.discard(rank)
            k = len(self.params)
            for j, node in enumerate(self.covers[rank]):
                parts[node] = msg.arrays[j * k : (j + 1) * k]
            stats.loss += msg["loss"]
            stats.correct += msg["correct"]
            computes.append(msg["compute_s"])
        waited = time.perf_counter()
        gradient = tree_sum((0, self.config.shards), parts, self.scratch)
        if not all(np.isfinite(g).all() for g in gradient):  # a NaN or Inf anywhere reaches the root
            # a real worker's gradient blew up: no update can be trusted, stop before Adam
            bad = [
                r for r in range(w) if not all(np.isfinite(a).all() for n in self.covers[r] for a in parts[n])
            ]
            raise FloatingPointError(f"step {self.step}: worker(s) {bad} sent non-finite gradients")
        for p, g in zip(self.params, gradient):
            p.grad = g
        self.optimizer.lr = self.config.lr_at(self.step, self.per_epoch)
        self.optimizer.update()
        self.step += 1
        self.version += 1
        done = time.perf_counter()
        compute = max(computes) if self.transport.parallel else sum(computes)
        stats.steps += 1
        stats.samples += n
        stats.compute += compute
        stats.comm += max(0.0, waited - start - compute)
        stats.update += done - waited
        stats.bytes += self.transport.sent_bytes - sent + self.transport.received_bytes - received

    def stop_workers(self, reason: str) -> None:
        for peer in self.peers.values():
            try:
                self.transport.send(peer, protocol.encode(protocol.STOP, reason=reason))
            except ConnectionError:
                pass  # already gone: nothing to stop

    def run(self) -> list[dict]:
        """Register the workers and train for the configured epochs; returns one record per epoch."""
        config = self.config
        first_epoch = first_index = 0
        if config.resume:
            self.step, first_epoch, first_index, path = checkpoint.resume_run(
                config.resume, config.identity(), self.net, self.optimizer
            )
            self.version = self.step
            self.echo(
                f"resumed from {path} at step {self.step} (epoch {first_epoch + 1}, batch {first_index})"
            )
        self.register()
        history: list[dict] = []
        # a resumed run adds to the interrupted run's records
        mode = "a" if config.resume else "w"
        metrics = open(config.metrics, mode, encoding="utf-8") if config.metrics else None
        last_event = 0.0
        saved = [self.step]  # the step of the newest checkpoint: never write the same one twice

        def save_checkpoint(epoch: int, index: int) -> None:
            if saved[0] == self.step:
                return
            saved[0] = self.step
            identity = config.identity()
            checkpoint.save_run(
                config.checkpoint_dir,
                identity,
                self.step,
                epoch,
                index,
                self.per_epoch,
                self.net,
                self.optimizer,
            )

        try:
            for epoch in range(first_epoch, config.n_epochs):
                if config.max_steps is not None and self.step >= config.max_steps:
                    break
                first = first_index if epoch == first_epoch else 0
                todo = self.per_epoch - first
                if config.max_steps is not None:
                    todo = min(todo, config.max_steps - self.step)
                stats = EpochStats()
                start = time.perf_counter()
                for index in range(first, first + todo):
                    self.train_step(epoch, index, stats)
                    if time.monotonic() - last_event > 0.2 or index == first + todo - 1:
                        last_event = time.monotonic()
                        self.events({"event": "step", "step": self.step, "epoch": epoch + 1})
                    every = config.checkpoint_every
                    if config.checkpoint_dir and every and self.step % every == 0:
                        save_checkpoint(epoch, index + 1)
                if config.checkpoint_dir:
                    save_checkpoint(epoch, first + todo)
                seconds = time.perf_counter() - start
                record = epoch_record(
                    epoch + 1,
                    self.step,
                    stats.loss / max(stats.samples, 1),
                    stats.correct / max(stats.samples, 1),
                    evaluate(self.net, self.data.test, self.shape),
                    seconds,
                    stats.samples,
                )
                record.update(stats.timing())
                history.append(record)
                self.echo(format_record(record, config.n_epochs) + "  " + format_timing(record))
                if metrics:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                self.events({"event": "epoch", "record": record})
        finally:
            if metrics:
                metrics.close()
            self.stop_workers("training finished")  # on errors too: workers need not wait to time out
        if config.save:
            self.net.save(config.save)
            self.echo(f"saved {config.save}")
        if self.rejected:
            log.warning("server: rejected %d messages in all", self.rejected)
        return history


def batch_length(n: int, batch_size: int, index: int) -> int:
    """Samples in global batch `index` of an epoch over n samples (the last one may be short)."""
    return len(range(n)[index * batch_size : (index + 1) * batch_size])


def format_timing(r: dict) -> str:
    return (
        f"step {r['step_ms']:.2f} ms = compute {r['compute_ms']:.2f} + comm {r['comm_ms']:.2f} "
        f"+ update {r['update_ms']:.2f}, {r['bytes_per_step'] / 1e6:.2f} MB/step"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distributed.server",
        description="The parameter server of one data-parallel job (launch starts it).",
    )
    parser.add_argument("--config", required=True, help="the job's JobConfig as a JSON object")
    parser.add_argument(
        "--bind", default="tcp://127.0.0.1:*", help="ZeroMQ endpoint to listen on (default: %(default)s)"
    )
    parser.add_argument("--events-fd", type=int, default=None, help="write JSON-lines progress events here")
    parser.add_argument("--watch-stdin", action="store_true", help="exit when standard input closes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        config = JobConfig.from_dict(json.loads(args.config))
    except (ValueError, TypeError) as e:
        parser.error(f"--config: {e}")

    from .lifeline import exit_when_stdin_closes
    from .transport import ZmqServerTransport

    if args.watch_stdin:
        exit_when_stdin_closes("server")
    events_file = os.fdopen(args.events_fd, "w", buffering=1) if args.events_fd is not None else None

    def events(event: dict) -> None:
        if events_file is not None:
            events_file.write(json.dumps(event) + "\n")

    transport = None
    try:
        data = load(config.dataset, config.data_dir)  # before listening: workers then find it cached
        largest = max(p.data.nbytes for p in build(config.model, dtype=config.dtype).parameters)
        transport = ZmqServerTransport(args.bind, max_message_bytes=max(largest, protocol.MAX_HEADER_BYTES))
        server = ParameterServer(config, transport, data, events)
        log.info("server: listening on %s (pid %d)", transport.endpoint, os.getpid())
        events({"event": "listening", "endpoint": transport.endpoint, "total_steps": server.total_steps})
        server.run()
        transport.close(linger=5.0)  # let the STOP messages reach the workers
        transport = None
        events({"event": "done"})
    except (TimeoutError, ConnectionError, OSError, ValueError, RuntimeError, FloatingPointError) as e:
        print(f"server: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if transport is not None:
            transport.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
