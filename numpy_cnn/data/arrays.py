"""Your own data: a .npz file, a folder of .npy files (memory-mapped), or a folder of IDX files in
MNIST's layout, every array checked, each problem an error naming the file and the array.

The arrays are x_train, y_train, x_test and y_test. Samples are images (N, H, W) or (N, C, H, W), or
flat (N, D), uint8 (scaled to [0, 1] batch by batch) or float32; labels are integers 0..K-1, K
being the largest label plus one. A path is used as given: no $NUMPY_CNN_DATA, no download."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes
from .idx import RACY_NS, IDXError, read_idx
from .mnist import FILES, Split, find_in, marks_dir

NAMES = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = dict(zip(NAMES, FILES))  # x_train: train-images-idx3-ubyte, ...
SAMPLE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))
NPZ, NPY, IDX = "a .npz file", "a folder of .npy files, memory-mapped", "a folder of IDX files"
# the content pass reads this much at a time, so a set larger than memory streams through
CHUNK_BYTES = 1 << 24


class DataError(ValueError):
    """A data set that cannot be trained on; the message names the file and the array."""


@dataclass(frozen=True)
class DataSet:
    """A user's train and test splits, one sample's shape as a model takes it, and the class count."""

    train: Split
    test: Split
    sample_shape: tuple[int, ...]  # (C, H, W) for images ((1, H, W) without a channel axis), (D,) flat
    classes: int
    digest: str  # SHA-256 of the arrays' names, shapes, dtypes and values: the same in every form
    path: str
    form: str  # NPZ, NPY or IDX

    @property
    def images(self) -> bool:
        """Whether the samples are images (random shifts apply), not flat vectors."""
        return len(self.sample_shape) == 3


def locate(path: str) -> tuple[str, dict[str, str]]:
    """The form of the data set at `path` and the file that holds each array."""
    if os.path.isfile(path):
        return NPZ, dict.fromkeys(NAMES, path)
    if not os.path.isdir(path):
        problem = "not a file or a folder" if os.path.exists(path) else "no such file or folder"
        raise DataError(f"{path}: {problem}")
    npy = {name: os.path.join(path, f"{name}.npy") for name in NAMES}
    if any(os.path.isfile(f) for f in npy.values()):
        missing = [os.path.basename(f) for f in npy.values() if not os.path.isfile(f)]
        if missing:
            raise DataError(f"{path}: {NPY}, but {', '.join(missing)} is not in it")
        return NPY, npy
    idx = {name: find_in(Path(path), IDX_FILES[name]) for name in NAMES}
    if any(idx.values()):
        missing = [f"{IDX_FILES[name]} (raw or .gz)" for name, f in idx.items() if f is None]
        if missing:
            raise DataError(f"{path}: {IDX}, but {', '.join(missing)} is not in it")
        return IDX, {name: os.fspath(f) for name, f in idx.items()}
    raise DataError(
        f"{path}: a folder without a data set: it needs either {', '.join(n + '.npy' for n in NAMES)}, "
        f"or MNIST's IDX files {', '.join(FILES)} (raw or .gz)"
    )


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read it as a .npz file ({e})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: one array, not a .npz file with {', '.join(NAMES)}")
    with f:
        missing = [name for name in NAMES if name not in f.files]
        if missing:
            has = ", ".join(f.files) or "no arrays"
            raise DataError(f"{path}: no array {', '.join(missing)} in it (it has {has})")
        arrays = {}
        for name in NAMES:
            try:
                arrays[name] = f[name]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise DataError(f"{path}: cannot read {name} ({e})") from None
    return arrays


def _read_npy(path: str, name: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)  # read-only; pages are shared
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read {name} from it as a .npy file ({e})") from None


def _read_idx(path: str, name: str) -> np.ndarray:
    try:
        return read_idx(path)
    except IDXError as e:  # its message starts with the path
        raise DataError(f"{e} ({name})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {name} ({e.strerror or e})") from None


def _read(form: str, files: dict[str, str]) -> dict[str, np.ndarray]:
    if form == NPZ:
        return _read_npz(files["x_train"])
    read = _read_npy if form == NPY else _read_idx
    return {name: read(file, name) for name, file in files.items()}


def check_arrays(arrays: dict[str, np.ndarray], files: dict[str, str]) -> None:
    """The checks that need only shapes and dtypes; raise DataError naming the file and the array."""

    def at(name: str) -> str:
        return f"{files[name]}: {name}"

    def other(name: str, subject: str) -> str:  # another array, with its file if that differs
        return name if files[name] == files[subject] else f"{name} ({files[name]})"

    for split in ("train", "test"):
        x, y, xn, yn = arrays[f"x_{split}"], arrays[f"y_{split}"], f"x_{split}", f"y_{split}"
        if x.dtype not in SAMPLE_DTYPES:
            raise DataError(
                f"{at(xn)} has dtype {x.dtype}; samples must be uint8 (scaled to [0, 1]) or float32"
            )
        if x.ndim not in (2, 3, 4):
            raise DataError(
                f"{at(xn)} has shape {x.shape}; samples must be images (N, H, W) or (N, C, H, W), "
                "or flat (N, D)"
            )
        if y.ndim != 1:
            raise DataError(f"{at(yn)} has shape {y.shape}; labels must be one integer per sample, (N,)")
        if y.dtype.kind not in "iu":
            raise DataError(f"{at(yn)} has dtype {y.dtype}; labels must be integers 0..K-1")
        if len(x) != len(y):
            raise DataError(f"{at(xn)} has {len(x)} samples but {other(yn, xn)} has {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"{at(xn)} is empty: the {split} set has no samples")
        if 0 in x.shape[1:]:
            raise DataError(f"{at(xn)} has shape {x.shape}: its samples hold no values")
    train, test = arrays["x_train"], arrays["x_test"]
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"{at('x_test')} has samples of shape {test.shape[1:]} but {other('x_train', 'x_test')} has "
            f"{train.shape[1:]}: train and test samples must have the same shape"
        )


def scan(arrays: dict[str, np.ndarray], files: dict[str, str]) -> tuple[str, int]:
    """One pass over every value, in chunks: labels must not be negative, float samples must be finite.
    Returns the digest (SHA-256 of each array's name, shape, dtype and bytes; labels as int64, as
    training uses them, so that the same data in any form has the same digest) and the class count."""
    digest, top = hashlib.sha256(), -1
    for name in NAMES:
        a = arrays[name]
        labels = name.startswith("y")
        digest.update(f"{name} {a.shape} {'int64' if labels else a.dtype}\n".encode())
        rows = max(1, CHUNK_BYTES // (a.itemsize * math.prod(a.shape[1:])))
        for lo in range(0, len(a), rows):
            chunk = np.ascontiguousarray(a[lo : lo + rows], dtype="<i8" if labels else None)
            digest.update(chunk)
            if labels:
                if chunk.min() < 0:
                    i = lo + int(np.argmax(chunk < 0))
                    raise DataError(
                        f"{files[name]}: {name} has label {chunk[i - lo]} at sample {i}; labels must be "
                        "integers 0..K-1"
                    )
                top = max(top, int(chunk.max()))
            elif a.dtype == np.float32:
                bad = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
                if bad.any():
                    raise DataError(
                        f"{files[name]}: {name} has NaN or Inf in sample {lo + int(np.argmax(bad))}; "
                        "float32 samples must be finite"
                    )
    return digest.hexdigest(), top + 1


def _stamp(files: dict[str, str]) -> tuple[tuple, ...]:
    """What must be unchanged for an earlier scan of these files to still hold (idx.py's rule)."""
    stats = [(f, os.stat(f)) for f in sorted(set(files.values()))]
    return tuple((f, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino, s.st_dev) for f, s in stats)


def _marker(path: str) -> Path:
    return marks_dir() / f"data-{hashlib.blake2b(os.fsencode(path), digest_size=16).hexdigest()}.json"


def _recall(path: str, stamp: tuple[tuple, ...]) -> tuple[str, int] | None:
    """The digest and class count of an earlier scan of these very files, by any process."""
    try:
        saved = json.loads(_marker(path).read_bytes())
        if saved["stamp"] == [list(s) for s in stamp]:
            return saved["digest"], saved["classes"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _remember(path: str, stamp: tuple[tuple, ...], digest: str, classes: int) -> None:
    """Best effort: the next process (a worker, the next run) skips the scan; files changed within
    RACY_NS may change again unseen, and are scanned again."""
    if time.time_ns() - max(max(s[2], s[3]) for s in stamp) < RACY_NS:
        return
    try:
        os.makedirs(marks_dir(), exist_ok=True)
        saved = {"stamp": [list(s) for s in stamp], "digest": digest, "classes": classes}
        atomic_write_bytes(_marker(path), json.dumps(saved).encode())
    except OSError:
        pass


def load(path: str | os.PathLike) -> DataSet:
    """The data set at `path`, checked; the same files load once per process, and are scanned once
    per machine (a marker in the cache remembers the result for files that have not changed since)."""
    path = os.path.abspath(os.fspath(path))
    form, files = locate(path)
    try:
        stamp = _stamp(files)
    except OSError as e:
        raise DataError(f"{e.filename}: cannot read it ({e.strerror or e})") from None
    return _load(path, form, tuple(files.items()), stamp)


@functools.lru_cache(maxsize=4)
def _load(path: str, form: str, files_: tuple[tuple[str, str], ...], stamp: tuple[tuple, ...]) -> DataSet:
    files = dict(files_)
    arrays = _read(form, files)
    check_arrays(arrays, files)
    known = _recall(path, stamp)
    if known is None:
        known = scan(arrays, files)
        _remember(path, stamp, *known)
    digest, classes = known
    for a in arrays.values():
        a.setflags(write=False)  # shared by every caller
    splits = []
    for split in ("train", "test"):
        labels = np.asarray(arrays[f"y_{split}"], dtype=np.int64)  # in memory: 8 bytes a sample
        labels.setflags(write=False)
        splits.append(Split(arrays[f"x_{split}"], labels))
    shape = arrays["x_train"].shape[1:]
    sample_shape = (1, *shape) if len(shape) == 2 else shape
    return DataSet(*splits, sample_shape, classes, digest, path, form)


def describe(data: DataSet) -> str:
    """The data set in a few words, e.g. for the line a run starts with."""
    return (
        f"{data.form}: {len(data.train)} train and {len(data.test)} test samples of shape "
        f"{data.sample_shape}, {data.train.images.dtype}, {data.classes} classes"
    )
