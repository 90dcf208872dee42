"""Net: a list of layers run forward and backward, with .npz save/load of its parameters."""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from .files import atomic_savez
from .layers import Layer
from .tensor import Tensor


class Net:
    """The layers in order; `parameters` is every Tensor in layer order; `training` is the mode."""

    def __init__(self, layers: Iterable[Layer]) -> None:
        self.layers = list(layers)
        self.training = True
        self.noise: tuple[int, int, int, int] | None = None

    def train(self, mode: bool = True) -> Net:
        """Training mode (Dropout drops) or, with mode False, evaluation mode; returns self, as torch."""
        self.training = mode
        for layer in self.layers:
            layer.training = mode
        return self

    def eval(self) -> Net:
        """Evaluation mode: Dropout is the identity; returns self."""
        return self.train(False)

    def set_noise(self, seed: int, epoch: int, index: int, offset: int = 0) -> Net:
        """Key the random draws of the next forwards: row j of their input is sample offset + j of
        global batch `index` of `epoch`, so its Dropout mask is the same whichever shard computes it.

        A trainer calls this before each micro-shard's forward, `offset` being the shard's first row
        in the global batch. Without a key (or after clear_noise) each Dropout draws from its own rng.
        """
        if min(seed, epoch, index, offset) < 0:
            raise ValueError(
                f"seed, epoch, index and offset must be non-negative, got {seed, epoch, index, offset}"
            )
        self.noise = (seed, epoch, index, offset)
        for i, layer in enumerate(self.layers):
            # the layer's index in the key: two Dropouts never share a mask
            layer.set_noise((seed, epoch, index, i), offset)
        return self

    def clear_noise(self) -> Net:
        """Back to unkeyed draws: each Dropout from its own rng."""
        self.noise = None
        for layer in self.layers:
            layer.set_noise(None)
        return self

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def predict(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Class scores (N, K) for inputs x, `batch_size` samples at a time, in evaluation mode
        (no Dropout); the mode the net was in is restored after."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        was_training = self.training
        self.eval()
        try:
            return np.concatenate([self.forward(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        finally:
            self.train(was_training)

    def backward(self, grad: np.ndarray, input_grad: bool = False) -> np.ndarray | None:
        """Fill every parameter's .grad; the gradient wrt the net's input is only made on request."""
        for i in reversed(range(len(self.layers))):
            grad = self.layers[i].backward(grad, input_grad=input_grad or i > 0)
        return grad

    @property
    def parameters(self) -> list[Tensor]:
        return [p for layer in self.layers for p in layer.parameters]

    def named_parameters(self) -> dict[str, Tensor]:
        """'{layer_index}.{name}' -> Tensor, in the order of `parameters`."""
        return {f"{i}.{k}": p for i, layer in enumerate(self.layers) for k, p in layer.params.items()}

    def save(self, path: str | os.PathLike) -> None:
        """Write one array per parameter to a .npz file, atomically."""
        atomic_savez(path, {k: p.data for k, p in self.named_parameters().items()})

    def load(self, path: str | os.PathLike) -> None:
        """Copy the arrays of a .npz written by `save` (or --save) into this net's parameters, in
        place; a --save file's metadata is skipped (numpy_cnn/saved.py reads it)."""
        with np.load(path, allow_pickle=False) as f:
            self.load_arrays({k: f[k] for k in f.files if k != "meta"}, str(path))

    def load_arrays(self, arrays: dict[str, np.ndarray], source: str = "arrays") -> None:
        """Copy {'{i}.weight': array, ...} into this net's parameters, in place, after checking them."""
        params = self.named_parameters()
        if set(arrays) != set(params):
            missing, extra = sorted(set(params) - set(arrays)), sorted(set(arrays) - set(params))
            raise ValueError(
                f"{source}: parameters do not match this net (missing {missing}, unexpected {extra})"
            )
        for key, p in params.items():
            arr = arrays[key]
            if arr.shape != p.shape:
                raise ValueError(f"{source}: {key} has shape {arr.shape}, the net needs {p.shape}")
            p.data[...] = arr

    def __repr__(self) -> str:
        inner = ",\n".join(f"  {layer!r}" for layer in self.layers)
        return f"Net([\n{inner}\n])"
