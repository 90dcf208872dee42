"""numpy_cnn: a small convolutional network library in pure NumPy."""

from . import layers
from .init import XavierUniform, Zeros
from .layers import (
    AvgPool2d,
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    LeakyReLU,
    Linear,
    MaxPool2d,
    ReLU,
    Reshape,
    Sigmoid,
    Tanh,
)
from .loss import CrossEntropyLoss
from .net import Net
from .optim import SGD, Adam, Optimizer
from .tensor import Tensor, default_dtype, get_default_dtype

__all__ = [
    "SGD",
    "Adam",
    "AvgPool2d",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "Layer",
    "LeakyReLU",
    "Linear",
    "MaxPool2d",
    "Net",
    "Optimizer",
    "ReLU",
    "Reshape",
    "Sigmoid",
    "Tanh",
    "Tensor",
    "XavierUniform",
    "Zeros",
    "default_dtype",
    "get_default_dtype",
    "layers",
]
