"""One child process of a job (the server, or a worker), its log, and signalling its process group."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from .progress import Progress


class Child:
    """One child process, its role name ("server", "worker 2") and the thread reading its log."""

    def __init__(self, name: str, argv: list[str], progress: Progress, env: dict, pass_fds=()) -> None:
        self.name = name
        self.error = ""  # the child's own "NAME: error: ..." line, if it printed one
        self.heard = time.monotonic()  # a server: when its last event came
        self.listening = False  # a server: whether it has said where it listens
        self.events: threading.Thread | None = None  # a server: the thread reading its events
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=pass_fds,
            env=env,
        )
        self.reader = threading.Thread(target=self._stream, args=(progress,), daemon=True)
        self.reader.start()

    def _stream(self, progress: Progress) -> None:
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith(f"{self.name}: error: "):  # said again in the launcher's own error
                self.error = line.removeprefix(f"{self.name}: error: ")
            progress.write(f"[{self.name}] {line}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def describe_exit(self) -> str:
        rc = self.process.returncode
        if rc is None:
            return "stopped responding"
        if rc < 0:
            try:
                return f"was killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"was killed by signal {-rc}"
        return f"exited with code {rc}"


def signal_group(child: Child, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)  # the child leads its own session: this reaches anything it started
    except ProcessLookupError:
        pass
