"""A child process's lifeline: exit as soon as the launcher that started it is gone."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable


def exit_when_stdin_closes(name: str, before: Callable[[], None] = lambda: None) -> None:
    """Watch stdin (a pipe only the launcher writes to) and exit at end-of-file, after `before()`
    (the server removes its files there: the launcher that would have is gone).

    The launcher never writes; the pipe closes when the launcher exits, however it exits, even
    by SIGKILL. So a child never outlives its launcher, and never needs to poll for it.
    """

    def watch() -> None:
        # os.read on the raw descriptor: a buffered reader's lock would block interpreter exit
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        try:
            before()
            print(f"{name}: the launcher is gone; exiting", file=sys.stderr, flush=True)
        except Exception:
            pass  # stderr was a pipe to the launcher, gone too
        finally:
            os._exit(1)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
