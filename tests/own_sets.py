"""Small learnable data sets made by the tests, written in each form `--dataset` takes."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from numpy_cnn.data.arrays import IDX_FILES, NAMES


def make_set(
    n_train: int = 600, n_test: int = 200, classes: int = 10, shape: tuple[int, ...] = (28, 28), seed: int = 0
) -> dict[str, np.ndarray]:
    """uint8 samples: one fixed random pattern per class under strong noise (fc-net needs an epoch
    or two to find them); every class in both splits."""
    rng = np.random.default_rng(seed)
    patterns = rng.random((classes, *shape)) < 0.3

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % classes)
        x = patterns[y] * 70 + rng.integers(0, 186, (n, *shape))
        return x.astype(np.uint8), y.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def write_npy(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        np.save(folder / f"{name}.npy", a)
    return folder


def idx_bytes(a: np.ndarray) -> bytes:
    """IDX as in MNIST's files: type 0x08 (unsigned byte), big-endian dimensions, then the data."""
    header = bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(a, np.uint8).tobytes()


def write_idx(folder: Path, arrays: dict[str, np.ndarray], gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        data = idx_bytes(arrays[name])
        if gz:
            (folder / f"{IDX_FILES[name]}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / IDX_FILES[name]).write_bytes(data)
    return folder
