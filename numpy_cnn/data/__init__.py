"""Data: the IDX reader, MNIST sources, and seeded mini-batches."""

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
from .idx import IDXError, read_idx
from .mnist import DATASETS, MNIST, DataNotFound, Split, load

__all__ = [
    "Batch",
    "DATASETS",
    "MNIST",
    "DataNotFound",
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
