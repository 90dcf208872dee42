"""Checkpoints: everything a run needs to continue bit for bit, in one atomically written .npz.

A checkpoint holds the parameters, the optimizer's state, and JSON metadata: the format version,
the run's configuration, the step count and the position in the data order (epoch, batch index).
No RNG state is needed: the data order and augmentation of epoch e are drawn from (seed, e).
The metadata also carries the SHA-256 of every array, so a file damaged on disk is detected even
where the zip container's own checks would pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_savez

FORMAT = 1
PREFIX, SUFFIX = "step-", ".npz"
log = logging.getLogger("numpy_cnn.checkpoint")


class CheckpointError(ValueError):
    """No usable checkpoint, or one that does not belong to this run."""


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]  # format, config, step, epoch, index
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(
    directory: str | os.PathLike,
    meta: dict[str, Any],
    params: dict[str, np.ndarray],
    optimizer: dict[str, np.ndarray],
    keep: int = 3,
) -> Path:
    """Write step-{meta['step']}.npz atomically (temp file, fsync, rename); keep the newest `keep`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f"param/{k}": v for k, v in params.items()} | {f"optim/{k}": v for k, v in optimizer.items()}
    meta = {**meta, "format": FORMAT, "sha256": _digest(arrays)}
    path = directory / f"{PREFIX}{meta['step']:09d}{SUFFIX}"
    atomic_savez(path, {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays})
    # prune only older steps: a newer file (say, a damaged one a resume skipped) is not ours to rank
    older = [f for f in sorted(directory.glob(f"{PREFIX}*{SUFFIX}")) if f.name < path.name]
    for old in older[: max(0, len(older) - (keep - 1))]:
        old.unlink()
    for stale in directory.glob(".tmp-*.npz"):  # left by a writer killed mid-write (one writer per folder)
        stale.unlink(missing_ok=True)
    return path


def has_checkpoints(directory: str | os.PathLike) -> bool:
    return Path(directory).is_dir() and any(Path(directory).glob(f"{PREFIX}*{SUFFIX}"))


def read(path: str | os.PathLike) -> Checkpoint:
    """Load and verify one checkpoint file; raises CheckpointError saying what is wrong."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    try:
        meta = json.loads(arrays.pop("meta").tobytes())
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: no valid metadata ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT}")
    if meta.get("sha256") != _digest(arrays):
        raise CheckpointError(f"{path}: checksum mismatch, the file is damaged")
    params = {k.removeprefix("param/"): v for k, v in arrays.items() if k.startswith("param/")}
    optimizer = {k.removeprefix("optim/"): v for k, v in arrays.items() if k.startswith("optim/")}
    return Checkpoint(path, meta, params, optimizer)


def latest(directory: str | os.PathLike) -> Checkpoint:
    """The newest valid checkpoint in `directory`; damaged or partial ones are skipped with a warning."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint folder")
    problems = []
    for path in sorted(directory.glob(f"{PREFIX}*{SUFFIX}"), reverse=True):
        try:
            return read(path)
        except CheckpointError as e:
            log.warning("skipping checkpoint: %s", e)
            problems.append(str(e))
    raise CheckpointError(f"{directory}: no valid checkpoint" + "".join(f"\n  {p}" for p in problems))


# the configuration fields that must match for a resumed run to continue the same computation
SAME_RUN = (
    "model",
    "batch_size",
    "lr",
    "lr_schedule",
    "seed",
    "dataset",
    "dtype",
    "shards",
    "shift",
    "epochs",
)


def check_resumable(meta: dict[str, Any], config: dict[str, Any]) -> None:
    """Raise CheckpointError naming the first setting that differs from the checkpointed run."""
    saved = meta.get("config", {})
    for key in SAME_RUN:
        if saved.get(key) != config.get(key):
            raise CheckpointError(
                f"the checkpoint is from a run with {key}={saved.get(key)!r}, "
                f"this run has {key}={config.get(key)!r}"
            )


def save_run(
    directory: str | os.PathLike,
    identity: dict,
    step: int,
    epoch: int,
    index: int,
    per_epoch: int,
    net,
    optimizer,
    model: dict | None = None,
) -> Path:
    """Checkpoint a training run whose next batch is `index` of `epoch` (normalized past an epoch's
    end); `model` is what the net is (sample shape, classes), so that it can be rebuilt from it."""
    if index == per_epoch:
        epoch, index = epoch + 1, 0
    meta = {"config": identity, "step": step, "epoch": epoch, "index": index, **(model or {})}
    params = {k: p.data for k, p in net.named_parameters().items()}
    return save(directory, meta, params, optimizer.state_dict())


def resume_run(directory: str | os.PathLike, identity: dict, net, optimizer) -> tuple[int, int, int, Path]:
    """Load the newest valid checkpoint into `net` and `optimizer`; returns (step, epoch, index, path)."""
    ck = latest(directory)
    check_resumable(ck.meta, identity)
    net.load_arrays(ck.params, str(ck.path))
    optimizer.load_state_dict(ck.optimizer)
    return ck.meta["step"], ck.meta["epoch"], ck.meta["index"], ck.path
