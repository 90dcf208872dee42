"""The IDX file format (LeCun's MNIST files), read with every check that can catch a bad file."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
import zlib
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes

# a file changed this recently may change again within the same timestamp tick, unseen by a later
# stat: it is not marked as verified yet (git's "racily clean" rule); 2 s covers FAT's coarse mtimes
RACY_NS = 2_000_000_000

# IDX type byte -> big-endian dtype
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXError(ValueError):
    """A file that is not a valid IDX file, or not the one expected."""


def read_file(path: str | os.PathLike) -> tuple[bytes, os.stat_result]:
    """The file's content, gunzipped if it is gzip (by its magic bytes, not its name), and its stat
    taken before the read: a change during or after the read then shows as a later mtime."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw, st
    try:
        return gzip.decompress(raw), st
    except (EOFError, OSError, zlib.error) as e:
        raise IDXError(f"{path}: corrupted or truncated gzip data ({e})") from e


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's content, gunzipped if it is gzip."""
    return read_file(path)[0]


def _identity(path: str | os.PathLike, st: os.stat_result, sha256: str) -> dict:
    """What must be unchanged for an earlier check of `path` against `sha256` to still hold; ctime
    catches an in-place edit whose mtime was set back, the inode a file replaced by another."""
    return {
        "path": os.path.abspath(path),
        "sha256": sha256,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
        "dev": st.st_dev,
    }


def _marker(marks: str | os.PathLike, path: str | os.PathLike) -> Path:
    # one marker per file, named after its absolute path (blake2b: a short name, not a check)
    key = hashlib.blake2b(os.fsencode(os.path.abspath(path)), digest_size=16).hexdigest()
    return Path(marks) / f"{key}.json"


def is_marked(marks: str | os.PathLike, path: str | os.PathLike, st: os.stat_result, sha256: str) -> bool:
    """Whether `path`, unchanged since, was verified against `sha256`; an unreadable marker is no."""
    try:
        return json.loads(_marker(marks, path).read_bytes()) == _identity(path, st, sha256)
    except (OSError, ValueError):
        return False


def mark(marks: str | os.PathLike, path: str | os.PathLike, st: os.stat_result, sha256: str) -> None:
    """Remember that `path` as `st` describes it matched `sha256`. Best effort: a marker that cannot
    be written only means the file is hashed again next time."""
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS:
        return
    try:
        os.makedirs(marks, exist_ok=True)
        atomic_write_bytes(_marker(marks, path), json.dumps(_identity(path, st, sha256)).encode())
    except OSError:
        pass


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes; the header must be valid and the payload exactly as long as it says."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IDXError(f"{name}: bad magic number {data[:4].hex() or '(empty)'}; not an IDX file")
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_TYPES:
        raise IDXError(f"{name}: unknown IDX type code 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{name}: truncated header ({len(data)} bytes, needs {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[type_code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) < expected:
        raise IDXError(f"{name}: truncated: header {dims} needs {expected} bytes, file has {len(data)}")
    if len(data) > expected:
        raise IDXError(f"{name}: {len(data) - expected} unexpected trailing bytes after {dims} data")
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def read_idx(
    path: str | os.PathLike,
    sha256: str | None = None,
    shape: tuple[int | None, ...] | None = None,
    marks: str | os.PathLike | None = None,
) -> np.ndarray:
    """Read a raw or gzipped IDX file, verifying the decompressed SHA-256 and the shape if given.
    With `marks` (a folder of markers), a file that verified before and is unchanged is not hashed."""
    data, st = read_file(path)
    arr = parse_idx(data, os.fspath(path))
    if shape is not None and (
        len(shape) != arr.ndim or any(s is not None and s != d for s, d in zip(shape, arr.shape))
    ):
        raise IDXError(f"{path}: shape {arr.shape}, expected {shape}")
    if sha256 is not None and not (marks is not None and is_marked(marks, path, st, sha256)):
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise IDXError(f"{path}: SHA-256 of the decompressed data is {digest}, expected {sha256}")
        if marks is not None:
            mark(marks, path, st, sha256)
    return arr
