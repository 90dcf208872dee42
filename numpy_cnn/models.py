"""The models a run can name: the two of the original NumPy-CNN write-up, a reference to your own
(PATH.py:FUNCTION or package.module:FUNCTION, model_ref.py), or, in this process, a function handed
to the Python API. Each is built from one seeded Generator, so that a random seed fixes every weight."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import DTypeLike

from . import layers, model_ref
from .model_ref import ModelError
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


# functions handed to the Python API (fit(..., single_process=True)) in this process, by their name
CALLABLES: dict[str, Callable[..., Net]] = {}


def register(function: Callable[..., Net]) -> str:
    """A name under which build() finds `function` in this process (and a run records it)."""
    name = f"<callable {getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}>"
    CALLABLES[name] = function
    return name


def check_name(name: str) -> str:
    """`name` if it is a model's name or is written as a reference (which is not imported here)."""
    if name in MODELS or name in CALLABLES:
        return name
    if not isinstance(name, str) or not model_ref.is_reference(name):
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}, or your own as "
            f"{model_ref.SYNTAX}"
        )
    model_ref.parse(name)
    return name


def check_importable(name: str) -> str:
    """`name` if it names a model this process can build; a reference is imported to be sure."""
    check_name(name)
    if model_ref.is_reference(name) and name not in CALLABLES:
        model_ref.resolve(name)
    return name


def build(name: str, seed: int = 0, dtype: DTypeLike | None = None, data=None) -> Net:
    """The model `name` with weights drawn from numpy.random.default_rng(seed). Your own model also
    needs `data` (anything with `sample_shape` and `classes`, as numpy_cnn.data.load returns)."""
    check_name(name)
    with default_dtype(get_default_dtype() if dtype is None else dtype):
        rng = np.random.default_rng(seed)
        if name in MODELS:
            return MODELS[name](rng)
        sample_shape, classes = _shape_of(name, data)
        function = CALLABLES[name] if name in CALLABLES else model_ref.resolve(name)
        net = model_ref.call(name, function, rng, sample_shape, classes)
        probe(name, net, sample_shape, classes)
        return net


def outputs(name: str, data=None) -> int:
    """Scores the model gives per sample: 10 for the built-in ones, one per class for your own."""
    return 10 if name in MODELS else _shape_of(name, data)[1]


def needs_data(name: str) -> bool:
    """Whether building `name` needs the data's sample shape and class count (your own model does)."""
    return name not in MODELS


def input_shape(name: str, data=None) -> tuple[int, ...]:
    """Shape of one sample as the model takes it, e.g. (1, 28, 28) for conv-net; your own model
    takes the data's `sample_shape`."""
    if name in INPUT_SHAPES:
        return INPUT_SHAPES[name]
    check_name(name)
    return _shape_of(name, data)[0]


def _shape_of(name: str, data) -> tuple[tuple[int, ...], int]:
    if data is None:
        raise ModelError(f"model {name}: building it needs the data's sample shape and class count")
    return tuple(int(n) for n in data.sample_shape), int(data.classes)


def probe(name: str, net: Net, sample_shape: tuple[int, ...], classes: int) -> None:
    """Run two blank samples through `net`, layer by layer, in evaluation mode: a net that cannot
    take the data, or does not give one score per class, fails here with the layer named, not
    deep inside a worker's first step."""
    x = np.zeros((2, *sample_shape), dtype=get_default_dtype())
    was_training = net.training
    net.eval()
    try:
        for i, layer in enumerate(net.layers):
            shape = x.shape
            try:
                x = layer.forward(x)
            except Exception as e:
                raise ModelError(
                    f"model {name}: net.layers[{i}], {layer!r}, cannot take an input of shape {shape} "
                    f"(the data's samples are {sample_shape}): {type(e).__name__}: {e}"
                ) from e
    finally:
        net.train(was_training)
    if x.shape != (2, classes):
        raise ModelError(
            f"model {name}: the net gives outputs of shape {x.shape[1:]} per sample; the data has "
            f"{classes} classes, so it must give one score per class, ({classes},)"
        )
