"""Shared memory between the server and the workers on its machine: arrays in files of the job's
private folder (the one that holds its Unix socket), mapped by both sides.

The server keeps its parameters (both buffers, distributed/updates.py) in one such file, and
gives each local worker a file for its gradient sums, one slot per node of the shard tree. A
PARAMS or UPDATE then names the buffer that holds a bucket's values instead of carrying them,
and a GRADS says that its sums are in the worker's file: a few hundred bytes on the socket
instead of the whole bucket, with no copy through the kernel on either side. Workers on other
machines get the arrays in the messages, as before.

The folder is private to this user (mode 0700, checked by the transport and by `open_file`), and
each file is created mode 0600: the same trust as the socket beside them. The space is reserved
when a file is made (posix_fallocate), so a full file system fails then, with a message, rather
than when a page is first written.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import stat
import tempfile
from pathlib import Path

import numpy as np

from numpy_cnn.buckets import Layout
from numpy_cnn.shards import Node, tree_nodes

log = logging.getLogger("numpy_cnn.distributed.server")


def job_folder_parent() -> str | None:
    """Where a job's private folder goes: /dev/shm, memory, so that the shared arrays, rewritten
    every step, never reach a disk; the temporary folder where $TMPDIR names one or there is no
    writable /dev/shm (None: tempfile's choice)."""
    if (
        not os.environ.get("TMPDIR")
        and os.path.isdir("/dev/shm")
        and os.access("/dev/shm", os.W_OK | os.X_OK)
    ):
        return "/dev/shm"
    return None


class SharedFile:
    """One mapped file: its path and the mapping, from which numpy views are cut."""

    def __init__(self, path: Path, mapping: mmap.mmap) -> None:
        self.path, self.mapping = path, mapping

    def array(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """The whole file as an array of `shape` (read-only if it was opened so)."""
        return np.frombuffer(self.mapping, dtype=dtype).reshape(shape)

    def unlink(self) -> None:
        """Remove the file; the mapping lives on while views of it do."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def create(folder: str | os.PathLike, prefix: str, nbytes: int) -> SharedFile:
    """A new file of `nbytes` zero bytes in `folder`, mode 0600, mapped for reading and writing;
    OSError (ENOSPC, say) if the space cannot be had."""
    fd, name = tempfile.mkstemp(prefix=prefix, dir=folder)  # O_EXCL, mode 0600
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, nbytes)
        else:  # macOS has none: zeros written are space taken, the same
            zeros = bytes(1 << 20)
            for at in range(0, nbytes, len(zeros)):
                os.write(fd, zeros[: nbytes - at])
        return SharedFile(Path(name), mmap.mmap(fd, nbytes))
    except BaseException:
        os.unlink(name)
        raise
    finally:
        os.close(fd)


def open_file(path: str | os.PathLike, folder: str | os.PathLike, nbytes: int, writable: bool) -> SharedFile:
    """Map a file the server made: it must be a regular file of `nbytes` bytes directly in
    `folder`, and both must belong to this user and be closed to everyone else. ValueError says
    which check failed."""
    path, folder = Path(path), Path(folder)
    if path.parent != folder:
        raise ValueError(f"shared file {path} is not in the job's folder {folder}")
    fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW)
    try:
        for what, info in (("folder", os.lstat(folder)), ("file", os.fstat(fd))):
            if info.st_uid != os.geteuid() or info.st_mode & 0o077:
                name = folder if what == "folder" else path
                raise ValueError(f"shared {what} {name} is not private to this user (mode 0700 or 0600)")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != nbytes:
            raise ValueError(f"shared file {path} holds {info.st_size} bytes, expected {nbytes}")
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        return SharedFile(path, mmap.mmap(fd, nbytes, access=access))
    finally:
        os.close(fd)


class ServerFiles:
    """The server's side: its parameter file (both buffers, updates.py) and the gradient file of
    each worker on its machine, by rank, with the server's views of them."""

    def __init__(self, transport, layout: Layout, shards: int, dtype: np.dtype) -> None:
        """`transport`: the server's (transport.py), which makes the files where its local
        workers reach them, or makes none."""
        self.transport, self.layout, self.dtype = transport, layout, dtype
        self.slots = {node: i for i, node in enumerate(tree_nodes(shards))}  # a gradient file's
        self.grads: dict[int, tuple[SharedFile, np.ndarray]] = {}
        self.params = self._make("params-", (2, layout.size))

    @property
    def buffers(self) -> np.ndarray | None:
        """The two parameter buffers, (2, values), in the file; None without one."""
        return None if self.params is None else self.params[1]

    def offer(self, rank: int, peer: bytes) -> dict:
        """The files a worker that has just said HELLO maps (WELCOME.memory): a new gradient file
        for it, and the parameters, and the socket of its lane where there is one; {} for a worker
        on another machine, or without room."""
        self.grads.pop(rank, None)
        if self.params is None or not self.transport.local(peer):
            return {}
        made = self._make(f"grads-{rank}-", (len(self.slots), self.layout.size))
        if made is None:
            return {}
        made[1].flags.writeable = False  # the worker's to write
        self.grads[rank] = made
        offer = {"params": str(self.params[0].path), "grads": str(made[0].path)}
        if self.transport.lane:  # where its messages go once it is ready (lane.py)
            offer["lane"] = self.transport.lane
        return offer

    def mapped(self, rank: int) -> None:
        """The worker is ready, its files mapped: their names are no longer needed."""
        if rank in self.grads:
            self.grads[rank][0].unlink()

    def drop(self, rank: int) -> None:
        """A worker is gone: what it sent this step stays readable while the ledger holds it."""
        gone = self.grads.pop(rank, None)
        if gone is not None:
            gone[0].unlink()

    def sums(self, rank: int, bucket: int, nodes: list[Node]) -> list[np.ndarray]:
        """Where `rank` wrote the sums of `bucket` over `nodes` (GRADS.shared)."""
        span = self.layout.span(bucket) if 0 <= bucket < len(self.layout.plan) else slice(0)
        return [self.grads[rank][1][self.slots[node], span] for node in nodes]

    def _make(self, prefix: str, shape: tuple[int, ...]) -> tuple[SharedFile, np.ndarray] | None:
        try:
            made = self.transport.share(prefix, math.prod(shape) * self.dtype.itemsize)
        except OSError as e:
            log.warning("server: no shared memory for the workers on this machine (%s); sending arrays", e)
            return None
        return None if made is None else (made, made.array(self.dtype, shape))
