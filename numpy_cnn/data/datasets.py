"""What --dataset names: a built-in data set by its name (mnist.py: found or fetched, and verified),
or the path of your own (arrays.py: a .npz file or a folder, used as given)."""

from __future__ import annotations

import hashlib
import os

from . import arrays, mnist
from .arrays import DataSet
from .mnist import DATASETS, FILES, MNIST


def is_builtin(dataset: str) -> bool:
    """Whether `dataset` is a built-in name; anything else is a path (a folder named `mnist` is ./mnist)."""
    return dataset in DATASETS


def load(dataset: str = "mnist", data_dir: str | os.PathLike | None = None) -> MNIST | DataSet:
    """The train and test splits `dataset` names, with their `sample_shape` and `classes`; `data_dir`
    (the --data-dir flag) only counts for a built-in name."""
    return mnist.load(dataset, data_dir) if is_builtin(dataset) else arrays.load(dataset)


def digest(dataset: str) -> str:
    """The data by its content: a built-in set by its files' known SHA-256s (a file that differs
    never loads), your own by the SHA-256 of its arrays (arrays.scan, done once per machine)."""
    if is_builtin(dataset):
        joined = "|".join(DATASETS[dataset].sha256[name] for name in FILES)
        return f"{dataset}, sha256 " + hashlib.sha256(joined.encode()).hexdigest()[:16]
    data = arrays.load(dataset)
    return f"{data.path}, sha256 {data.digest[:16]}"


def describe_source(dataset: str, data_dir: str | os.PathLike | None) -> str:
    """Where the data comes from, in words, for the line a run starts with."""
    if is_builtin(dataset):
        return mnist.describe_source(dataset, data_dir)
    return arrays.describe(arrays.load(dataset))


def check(dataset: str, data_dir: str | None, max_shift: int) -> DataSet | None:
    """Your own data set, read and checked (None for a built-in name); ValueError naming the flag,
    and the file and array, if it cannot be trained on with these flags."""
    if is_builtin(dataset):
        return None
    if data_dir is not None:
        raise ValueError(
            f"--data-dir is for the built-in data sets ({', '.join(sorted(DATASETS))}); "
            f"--dataset {dataset} names the data itself"
        )
    if not os.path.exists(dataset):
        raise ValueError(
            f"--dataset {dataset}: no such file or folder, and not a built-in data set "
            f"({', '.join(sorted(DATASETS))})"
        )
    try:
        data = arrays.load(dataset)
    except arrays.DataError as e:
        raise ValueError(f"--dataset: {e}") from None
    if max_shift and not data.images:
        raise ValueError(
            f"--shift {max_shift}: {data.path} holds flat samples of shape {data.sample_shape}; "
            "random shifts apply to images only (pass --shift 0)"
        )
    return data
