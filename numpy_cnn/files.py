"""Atomic files: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

PROC_STATUS = "/proc/self/status"  # Linux 4.7+ shows the umask here


def current_umask() -> int:
    """The process umask, read without changing it where /proc shows it."""
    try:
        with open(PROC_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # os.umask can only read by writing, and the mask is shared by all threads: while it is swapped,
    # a file another thread creates gets 0o077, the strict choice, rather than 0 (world-writable)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], suffix: str = "") -> None:
    """Call `write` on a temporary file beside `path`, fsync it, give it the mode open() would, rename
    it over `path`, and fsync the folder so the rename survives a crash too."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    try:
        # mkstemp makes the file 0600 whatever the umask; the result should look like any other file
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` atomically."""
    atomic_write(path, lambda f: f.write(data))


def atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` as an .npz file at `path` atomically."""
    atomic_write(path, lambda f: np.savez(f, **arrays), suffix=".npz")
