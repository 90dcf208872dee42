"""The IDX file format (LeCun's MNIST files), read with every check that can catch a bad file."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib

import numpy as np

# IDX type byte -> big-endian dtype
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXError(ValueError):
    """A file that is not a valid IDX file, or not the one expected."""


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's content, gunzipped if it is gzip (by its magic bytes, not its name)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise IDXError(f"{path}: corrupted or truncated gzip data ({e})") from e


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
) -> np.ndarray:
    """Read a raw or gzipped IDX file, verifying the decompressed SHA-256 and the shape if given."""
    data = read_bytes(path)
    arr = parse_idx(data, os.fspath(path))
    if shape is not None and (
        len(shape) != arr.ndim or any(s is not None and s != d for s, d in zip(shape, arr.shape))
    ):
        raise IDXError(f"{path}: shape {arr.shape}, expected {shape}")
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise IDXError(f"{path}: SHA-256 of the decompressed data is {digest}, expected {sha256}")
    return arr
