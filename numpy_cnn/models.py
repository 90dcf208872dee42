"""The two models of the original NumPy-CNN write-up, built from one seeded Generator, so that a
random seed fixes every weight."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import DTypeLike

from . import layers
from .net import Net
from .tensor import default_dtype, get_default_dtype


def fc_net(rng: np.random.Generator) -> Net:
    # (N, 784) -> (N, 10)
    return Net(
        [
            layers.Linear(784, 400, rng=rng),
            layers.ReLU(),
            layers.Linear(400, 100, rng=rng),
            layers.ReLU(),
            layers.Linear(100, 10, rng=rng),
        ]
    )


def conv_net(rng: np.random.Generator) -> Net:
    # (N, 1, 28, 28) -> (N, 10)
    return Net(
        [
            layers.Conv2d(1, 6, k_size=(5, 5), stride=(1, 1), padding=(2, 2), rng=rng),
            layers.ReLU(),
            layers.MaxPool2d(k_size=[2, 2], stride=[2, 2]),
            layers.Conv2d(6, 16, k_size=[5, 5], stride=[1, 1], rng=rng),
            layers.ReLU(),
            layers.MaxPool2d(k_size=[2, 2], stride=[2, 2]),
            layers.Reshape(-1),
            layers.Linear(400, 120, rng=rng),
            layers.ReLU(),
            layers.Linear(120, 84, rng=rng),
            layers.ReLU(),
            layers.Linear(84, 10, rng=rng),
        ]
    )


MODELS: dict[str, Callable[[np.random.Generator], Net]] = {"fc-net": fc_net, "conv-net": conv_net}
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"fc-net": (784,), "conv-net": (1, 28, 28)}
# the epochs of the original write-up's reported runs (fc-net 98.64% after 14, conv-net 99.16% after 12)
DEFAULT_EPOCHS: dict[str, int] = {"fc-net": 14, "conv-net": 12}


def check_name(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return name


def build(name: str, seed: int = 0, dtype: DTypeLike | None = None) -> Net:
    """The model `name` with weights drawn from numpy.random.default_rng(seed)."""
    check_name(name)
    with default_dtype(get_default_dtype() if dtype is None else dtype):
        return MODELS[name](np.random.default_rng(seed))


def input_shape(name: str) -> tuple[int, ...]:
    """Shape of one sample as the model takes it, e.g. (1, 28, 28) for conv-net."""
    return INPUT_SHAPES[check_name(name)]
