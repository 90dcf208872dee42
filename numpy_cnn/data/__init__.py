"""Data: the IDX reader, MNIST sources, your own arrays, and seeded mini-batches."""

from .arrays import DataError, DataSet
from .batches import (
    Batch,
    batch_indices,
    batches,
    epoch_order,
    epoch_shifts,
    global_batch,
    shift_images,
    steps_per_epoch,
    to_float,
)
from .datasets import load
from .idx import IDXError, read_idx
from .mnist import DATASETS, MNIST, DataNotFound, Split

__all__ = [
    "Batch",
    "DATASETS",
    "MNIST",
    "DataError",
    "DataNotFound",
    "DataSet",
    "IDXError",
    "Split",
    "batch_indices",
    "batches",
    "epoch_order",
    "epoch_shifts",
    "global_batch",
    "load",
    "read_idx",
    "shift_images",
    "steps_per_epoch",
    "to_float",
]
