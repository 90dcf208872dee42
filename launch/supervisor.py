"""Job: the server and the workers as child processes, their logs, and stopping them together.

Every child runs in its own session, so Ctrl-C reaches only the launcher, which then stops them
all in order. Each child's stdin is a pipe the launcher never writes: when the launcher dies,
even by SIGKILL, the pipe closes and the child exits (numpy_cnn/distributed/lifeline.py). Each
child is this command again: `launch server` or `launch worker` (launch/roles.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

from numpy_cnn import checkpoint
from numpy_cnn.cli import resume_hint, summary
from numpy_cnn.distributed.config import JobConfig, local_buckets, local_spin
from numpy_cnn.distributed.keys import TemporaryKeys
from numpy_cnn.distributed.memory import job_folder_parent
from numpy_cnn.distributed.tracing import LAUNCHER, process_trace
from numpy_cnn.distributed.worker import EXIT_REFUSED, EXIT_SERVER_SILENT

from .children import Child, signal_group
from .progress import Progress
from .tracefile import clear_parts, collect_trace

STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL after this long
FINISH_GRACE_S = 10.0  # after the server is done, the workers have this long to exit


class Terminated(Exception):
    """The launcher got SIGTERM."""


class Job:
    """Runs one job: the server first, the workers once it listens; returns the exit code.

    A worker that dies (or that the server drops as silent, which the launcher then kills) is
    started again with the same rank, up to --max-restarts times in all; the server meanwhile
    gives its micro-shards to the others. With --on-worker-failure abort, any death ends the job.
    With --checkpoint-dir, a server killed by a signal or stuck is started again from the newest
    checkpoint, at the same address, and its workers rejoin it; it counts in the same budget.
    """

    def __init__(
        self,
        config: JobConfig,
        progress: Progress | None = None,
        bind: str = "tcp://127.0.0.1:*",
        keys_dir: str | None = None,
        local_workers: int | None = None,
        ipc: bool = True,
        ranks: range | None = None,
        connect: str | None = None,
        token: str | None = None,
    ) -> None:
        """`ranks`: the workers started here (default: the first `local_workers`); `connect`: the
        server's endpoint on another node (this node then runs no server); `token`: the job token
        the children derive their keys from, instead of key files."""
        self.config = config
        self.progress = progress or Progress()
        self.children: list[Child] = []
        self.events: queue.Queue[dict] = queue.Queue()
        self.bind, self.keys_dir, self.ipc = bind, keys_dir, ipc
        self.own_keys = False  # keys_dir is a key set made for this job alone (TemporaryKeys)
        local = config.workers if local_workers is None else local_workers
        self.ranks = range(local) if ranks is None else ranks
        self.local_workers = len(self.ranks)
        self.connect, self.token = connect, token
        self.workers: dict[int, Child] = {}  # rank -> its newest process
        self.endpoint = ""  # where workers connect: the private Unix socket, or the CURVE TCP port
        self.restarts = 0  # of workers and of the server, in all
        self.server: Child | None = None  # the newest server process
        self.server_args: list[str] = []
        self.listens_at = ""  # the endpoint the first server bound; a restarted one binds it again
        self.history: list[dict] = []  # the server's epoch records, as its events bring them
        self.done: dict | None = None  # the server's "done" event
        self.phase = "starting"  # then "training" (from the first step on), then "trained"
        self.error = ""  # why the job failed, as its last "launch: error:" line says
        self.started = time.monotonic()
        self.trace = process_trace(config, "launcher", LAUNCHER, "launcher")  # restarts, as instants
        if connect is None:  # the server's machine: its processes and cores settle --buckets auto
            mode, why = local_buckets(config.buckets, len(self.ranks) + 1)
            if why:
                self.say(why)
            self.config = dataclasses.replace(config, buckets=mode)

    def say(self, message: str) -> None:
        self.progress.write(f"launch: {message}")

    def run(self) -> int:
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            if self.keys_dir is not None or self.token is not None:
                return self._run()
            with TemporaryKeys() as folder:  # a fresh key set, only for this job
                self.keys_dir, self.own_keys = str(folder), True
                return self._run()
        except KeyboardInterrupt:
            self.say("interrupted; stopping every process")
            return self._stopped(130)
        except Terminated:
            self.say("terminated; stopping every process")
            return self._stopped(143)
        finally:
            self.stop_all()
            if self.connect is None:  # the server's node: every process's part of --trace, in one file
                collect_trace(self.config, self.trace, self.say)
            self.progress.close()
            signal.signal(signal.SIGTERM, previous)

    def _stopped(self, code: int) -> int:
        self.stop_all()
        if self.phase == "training":  # only then is there something to continue
            print(f"launch: {resume_hint(self.config)}", file=sys.stderr, flush=True)
        return code

    def _on_sigterm(self, signum, frame) -> None:
        raise Terminated

    def _spawn(self, name: str, args: list[str], env_extra: dict | None = None, pass_fds=()) -> Child:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
        if self.token is not None:  # private to this user, like the key files it replaces
            env["NUMPY_CNN_TOKEN"] = self.token
        argv = [sys.executable, "-m", "numpy_cnn.launch", *args, "--watch-stdin"]
        child = Child(name, argv, self.progress, env, pass_fds)
        self.children.append(child)
        self.say(f"started {name} (pid {child.pid})")
        return child

    def _read_events(self, fd: int, server: Child) -> None:
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                server.heard = time.monotonic()
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(event, dict):
                    self.events.put(event)

    def _run(self) -> int:
        if self.connect is not None:
            return self._run_workers_only()
        clear_parts(self.config)  # an earlier run's, which would be merged into this one's trace
        if not (self.ipc and self.local_workers):
            return self._run_with([])
        # mode 0700; the socket and the arrays the server shares with these workers (memory.py)
        with tempfile.TemporaryDirectory(prefix="numpy-cnn-ipc-", dir=job_folder_parent()) as folder:
            return self._run_with(["--ipc-dir", folder])

    def _run_with(self, server_args: list[str]) -> int:
        self.server_args = server_args  # the same for every server this job starts
        server = self._start_server(self.config, self.bind)
        while True:
            try:
                self._on_event(self.events.get(timeout=0.1))
            except queue.Empty:
                pass
            if self.server_returns and self._stuck(server):  # else its workers notice, as below
                silent = f"(no word from it for --timeout {self.config.timeout:g} s)"
                found = self._checkpoint_to_resume()
                if found is None:
                    return self._fail(server, f"{silent}{self._spent()}")
                server = self._resume_server(server, found, f"stopped responding {silent}; killing it and")
                continue
            if server.process.poll() is not None:
                self._drain(server)
                if server.process.returncode == 0:
                    return self._finish(self.done)
                # killed by a signal: it could not tell its workers anything, and they wait for it
                found = self._checkpoint_to_resume() if server.process.returncode < 0 else None
                if found is None:
                    return self._fail(server, self._spent().lstrip())
                server = self._resume_server(server, found, f"{server.describe_exit()};")
                continue
            for rank, child in list(self.workers.items()):
                rc = child.process.poll()
                if rc is None or rc == 0:  # 0: told to stop by the server
                    continue
                if rc == EXIT_SERVER_SILENT and server.process.poll() is None and not self.server_returns:
                    # the worker is fine; the server is alive but stuck, and nothing can bring it back
                    return self._fail(server, f"(worker {rank} heard nothing from it for --timeout)")
                if rc == EXIT_REFUSED:  # its machine differs from the server's: restarting cannot help
                    return self._fail(child, "(it refused the job: its machine differs from the server's)")
                if self.config.on_worker_failure == "abort":
                    return self._fail(child)
                if not self._restart(rank, child):
                    return self._fail(child, "and every other worker is gone too")

    def _spent(self) -> str:
        """Why a server that could come back does not, if that is the restart budget."""
        if self.server_returns and self.restarts >= self.config.max_restarts:
            return f" (no restarts left: --max-restarts {self.config.max_restarts})"
        return ""

    @property
    def server_returns(self) -> bool:
        """Whether a dead server may be restarted; its workers then wait for it (worker.Talk)."""
        return bool(self.config.checkpoint_dir) and self.config.max_restarts > 0

    def _start_server(self, config: JobConfig, bind: str) -> Child:
        read_fd, write_fd = os.pipe()
        try:
            server = self._spawn(
                "server",
                [
                    "server",
                    "--config",
                    json.dumps(config.to_dict()),
                    "--events-fd",
                    str(write_fd),
                    "--bind",
                    bind,
                    *self._keys_args(),
                    # the server removes this job's own key set if the launcher is killed
                    *(["--temporary-keys"] if self.own_keys else []),
                    *self.server_args,
                ],
                pass_fds=(write_fd,),
            )
        finally:
            os.close(write_fd)
        server.events = threading.Thread(target=self._read_events, args=(read_fd, server), daemon=True)
        server.events.start()
        self.server = server
        return server

    def _drain(self, server: Child) -> None:
        """A server has exited: its event pipe is closed now; take its last events."""
        server.events.join(timeout=2.0)
        while not self.events.empty():
            self._on_event(self.events.get())

    def _stuck(self, server: Child) -> bool:
        """A server that listens, has not finished training, and has sent no event for --timeout
        (it sends one at every heartbeat to its workers) is stuck: stopped, or hung."""
        if not server.listening or self.phase == "trained" or server.process.poll() is not None:
            return False
        return time.monotonic() - server.heard > self.config.timeout

    def _checkpoint_to_resume(self) -> tuple[JobConfig, str] | None:
        """The config that restarts the server from --checkpoint-dir, and the newest checkpoint
        that verifies there; None without one, or without restarts left."""
        config = self.config
        if not self.server_returns or self.restarts >= config.max_restarts:
            return None
        if not checkpoint.has_checkpoints(config.checkpoint_dir):
            return None
        resumed = dataclasses.replace(config, resume=config.checkpoint_dir)
        try:
            newest = checkpoint.latest(config.checkpoint_dir)
            # --resume is --checkpoint-dir, so the folder may hold checkpoints; and they are this run's
            resumed.check_paths()
        except ValueError as e:  # CheckpointError is one
            self.say(f"cannot restart the server: {e}")
            return None
        return resumed, newest.path.stem

    def _resume_server(self, server: Child, found: tuple[JobConfig, str], what: str) -> Child:
        """Start the server again, at the address the first one had, from a checkpoint. Its
        workers, here and on other nodes, say HELLO until it welcomes them back."""
        config, name = found
        self.restarts += 1
        limit = f"({self.restarts} of --max-restarts {self.config.max_restarts})"
        self.say(f"server (pid {server.pid}) {what} restarting it from checkpoint {name} {limit}")
        self.trace.instant("server restarted", checkpoint=name)
        if server.process.poll() is None:  # stuck
            signal_group(server, signal.SIGKILL)
            server.process.wait()
            self._drain(server)
        if self.phase == "trained":  # died saving the weights: the steps since the checkpoint come again
            self.phase = "training"
        return self._start_server(config, self.listens_at or self.bind)

    def _on_event(self, event: dict) -> None:
        """One event from the server: it listens, lost a worker, made progress, or is done."""
        kind = event.get("event")
        if kind == "listening":
            self.server.listening = True
            if self.endpoint:  # a restarted server, where the first one was: its workers come back
                return
            self.progress.start(int(event.get("total_steps", 0)))
            self.listens_at = str(event.get("endpoint"))  # a port picked by the OS: the same again
            self.endpoint = str(event.get("local_endpoint") or event.get("endpoint"))
            for rank in self.ranks:
                self._start_worker(rank)
        elif kind == "resumed" and isinstance(event.get("step"), int):
            self.progress.restart(event["step"])  # from the checkpoint's step on
        elif kind == "worker_lost":
            self._kill_lost(event.get("rank"), event.get("pid"))
        elif kind == "done":
            self.done = event
        elif kind == "trained":
            self.phase = "trained"
        else:
            if kind == "step" and self.phase == "starting":
                self.phase = "training"
            elif kind == "epoch" and isinstance(event.get("record"), dict):
                self.history.append(event["record"])
            self.progress.event(event)

    def _kill_lost(self, rank, pid) -> None:
        """The server dropped `rank`: if that process still runs, it is stuck; kill it."""
        child = self.workers.get(rank) if isinstance(rank, int) else None
        # the pid tells a stuck process from the restarted one that already replaced a dead one
        if child is not None and child.pid == pid and child.process.poll() is None:
            self.say(f"{child.name} (pid {child.pid}) stopped responding; killing it")
            signal_group(child, signal.SIGKILL)

    def _restart(self, rank: int, child: Child) -> bool:
        """Start `rank` again if restarts are left; False if no worker is left at all."""
        del self.workers[rank]
        what = f"{child.name} (pid {child.pid}) {child.describe_exit()}"
        if self.restarts < self.config.max_restarts:
            self.restarts += 1
            self.say(f"{what}; restarting it ({self.restarts} of --max-restarts {self.config.max_restarts})")
            self.trace.instant("worker restarted", rank=rank, why=child.describe_exit())
            self._start_worker(rank)
            return True
        self.say(f"{what}; no restarts left (--max-restarts {self.config.max_restarts}), the others carry on")
        return bool(self.workers) or self.local_workers < self.config.workers

    def _start_worker(self, rank: int) -> None:
        # one BLAS thread each, set before numpy loads; the worker pins it again with threadpoolctl
        env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.workers[rank] = self._spawn(
            f"worker {rank}",
            [
                "worker",
                "--connect",
                self.endpoint,
                "--rank",
                str(rank),
                "--join-timeout",
                str(self.config.join_timeout),
                *self._keys_args(),
                *(["--data-dir", self.config.data_dir] if self.config.data_dir else []),
            ],
            env_extra={**env, **local_spin(len(self.ranks))},  # its machine's workers and cores
        )

    def _keys_args(self) -> list[str]:
        return ["--keys", str(self.keys_dir)] if self.keys_dir is not None else []

    def _run_workers_only(self) -> int:
        """A node without the server: start this node's workers, restart the ones that die, and
        end when every one of them has been told by the server that the job is over."""
        self.endpoint = self.connect
        for rank in self.ranks:
            self._start_worker(rank)
        ended: float | None = None  # when the first worker here was told the job finished
        while True:
            time.sleep(0.1)
            finished = True
            for rank, child in list(self.workers.items()):
                rc = child.process.poll()
                if rc == 0:
                    ended = ended or time.monotonic()
                    continue
                finished = False
                if rc is None:
                    if ended is not None and time.monotonic() - ended > FINISH_GRACE_S:
                        # never registered (restarted late) or frozen: the job is over without it
                        self.say(
                            f"{child.name} (pid {child.pid}) still runs after the job ended; stopping it"
                        )
                        signal_group(child, signal.SIGKILL)
                        child.process.wait(timeout=STOP_GRACE_S)
                        del self.workers[rank]
                    continue
                if ended is not None:  # the job is over: nothing to restart for
                    del self.workers[rank]
                    continue
                if rc == EXIT_SERVER_SILENT:
                    return self._fail(child, f"(the server at {self.connect} went silent)")
                if rc == EXIT_REFUSED:  # this machine differs from the server's: restarting cannot help
                    return self._fail(child, "(it refused the job: this machine differs from the server's)")
                if self.config.on_worker_failure == "abort":
                    return self._fail(child)
                if not self._restart(rank, child) or not self.workers:
                    return self._fail(child, "and this node has no other worker left")
            if finished:
                self.say(f"every worker of this node ({', '.join(map(str, self.ranks))}) finished")
                return 0

    def _fail(self, child: Child, more: str = "") -> int:
        what = f"{child.name} {child.describe_exit()}" + (f" {more}" if more else "")
        if child.name != "server" and self.config.on_worker_failure == "abort":
            what += " (--on-worker-failure abort)"
        if child.process.poll() is not None:
            child.reader.join(timeout=2.0)  # its last lines, which may say why it exited
        if child.error:
            what += f": {child.error}"
        self.say(f"{child.name} (pid {child.pid}) {child.describe_exit()}; stopping the job")
        self.stop_all()
        self.error = what
        print(f"launch: error: {what}", file=sys.stderr, flush=True)
        if self.phase == "training":  # a failure before training or after it is not helped by resuming
            print(f"launch: {resume_hint(self.config)}", file=sys.stderr, flush=True)
        return 1

    def _finish(self, done: dict | None) -> int:
        if done is None:
            self.error = "the server exited before finishing"
            print(f"launch: error: {self.error}", file=sys.stderr, flush=True)
            return 1
        # the server told its registered workers to stop; a restarted one still joining was not
        told = set(done.get("workers", []))
        for rank, child in self.workers.items():
            if rank not in told:
                signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + FINISH_GRACE_S
        for rank, child in self.workers.items():
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.error = f"{child.name} did not exit after the job finished"
                print(f"launch: error: {self.error}", file=sys.stderr)
                return 1
            if child.process.returncode != 0 and rank in told:
                return self._fail(child)
        for child in self.children:
            child.reader.join(timeout=2.0)
        self.say(summary(self.config, self.history, time.monotonic() - self.started))
        return 0

    def stop_all(self) -> None:
        """SIGTERM every live child, SIGKILL what is left after a grace period, and reap them all."""
        alive = [c for c in self.children if c.process.poll() is None]
        for child in alive:
            signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in alive:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_group(child, signal.SIGKILL)
                child.process.wait()
        for child in self.children:
            if child.process.stdin and not child.process.stdin.closed:
                child.process.stdin.close()
            child.reader.join(timeout=2.0)
