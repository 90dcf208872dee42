"""Saved models: a `--save` file holds the weights and says what they are, so the net can be
rebuilt from the file alone; a checkpoint can be read as a saved model too.

The file is an .npz: one array per parameter ('{layer}.{name}', as Net.save writes them) and a
`meta` array of UTF-8 JSON: the format version, the model reference (a built-in name or
`module:function`), the shape of one sample as the model takes it, the class count, the dtype, the
data set and the step. A file from before the metadata (weights only) still loads when the model is
named. Nothing in the metadata depends on how the run was split (workers, shards, threads), so runs
with the same weights write the same bytes.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import checkpoint
from .files import atomic_savez
from .net import Net

FORMAT = 1
META = "meta"


class SavedModelError(ValueError):
    """A file that cannot be read as a saved model, or that does not fit the model asked for."""


@dataclass
class SavedModel:
    path: Path
    meta: dict[str, Any]  # empty for a file from before the metadata
    params: dict[str, np.ndarray]  # '{layer}.{name}' -> array

    @property
    def model(self) -> str | None:
        return self.meta.get("model")


def describe(config, step: int, sample_shape: tuple[int, ...], classes: int) -> dict[str, Any]:
    """The metadata of a run's saved model."""
    return {
        "format": FORMAT,
        "model": config.model,
        "sample_shape": list(sample_shape),
        "classes": classes,
        "dtype": config.dtype,
        "dataset": config.dataset,
        "step": step,
    }


def save(path: str | os.PathLike, net: Net, meta: dict[str, Any]) -> None:
    """Write the net's parameters and `meta` to `path`, atomically."""
    arrays = {k: p.data for k, p in net.named_parameters().items()}
    if META in arrays:  # a layer's parameter can never be named this ('{index}.{name}')
        raise ValueError(f"a parameter is named {META!r}")
    blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    atomic_savez(path, {**arrays, META: blob})


def read(path: str | os.PathLike) -> SavedModel:
    """A --save file (with or without metadata) or a checkpoint, as a saved model; raises
    SavedModelError naming the file and what is wrong."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise SavedModelError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise SavedModelError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if any(k.startswith("param/") for k in arrays):  # a checkpoint: verified by its own reader
        try:
            ck = checkpoint.read(path)
        except checkpoint.CheckpointError as e:
            raise SavedModelError(str(e)) from None
        config = ck.meta.get("config", {})
        meta = {key: config.get(key) for key in ("model", "dtype", "dataset")}
        # what the net is: in checkpoints from this version on (older ones: a built-in model's own)
        meta.update({k: ck.meta[k] for k in ("sample_shape", "classes") if k in ck.meta})
        return SavedModel(path, {**meta, "step": ck.meta.get("step")}, ck.params)
    meta: dict[str, Any] = {}
    if META in arrays:
        try:
            meta = json.loads(arrays.pop(META).tobytes())
        except ValueError as e:
            raise SavedModelError(f"{path}: its metadata is not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise SavedModelError(
                f"{path}: saved-model format {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                f"this version reads {FORMAT}"
            )
    return SavedModel(path, meta, arrays)


def load_into(net: Net, path: str | os.PathLike) -> SavedModel:
    """Copy the weights of a saved model or a checkpoint into `net`, after checking they fit it."""
    saved = read(path)
    try:
        net.load_arrays(saved.params, str(saved.path))
    except ValueError as e:
        hint = f" (the file is a {saved.model} model)" if saved.model else ""
        raise SavedModelError(f"{e}{hint}") from None
    return saved


def load_model(path: str | os.PathLike, model: str | None = None) -> tuple[Net, SavedModel]:
    """Rebuild the net a saved model or checkpoint holds, from the file alone (`model` names it for
    a file from before the metadata, and must agree with the file's if both say)."""
    from .models import build  # the models import this module's caller, not the other way round

    saved = read(path)
    if model is not None and saved.model is not None and model != saved.model:
        raise SavedModelError(f"{saved.path}: holds a {saved.model} model, not {model}")
    ref = model or saved.model
    if ref is None:
        raise SavedModelError(f"{saved.path}: the file does not say which model it holds: name it (--model)")
    shape, classes = saved.meta.get("sample_shape"), saved.meta.get("classes")
    # your own model is built for the samples and classes the file records
    data = SimpleNamespace(sample_shape=tuple(shape), classes=classes) if shape and classes else None
    try:
        net = build(ref, dtype=saved.meta.get("dtype") or "float32", data=data)
    except ValueError as e:
        raise SavedModelError(f"{saved.path}: {e}") from None
    load_into(net, path)
    return net, saved
