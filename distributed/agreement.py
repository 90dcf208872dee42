"""What every process of a job must agree on before it computes: the wire protocol, the package
version, the model's definition, and the training data. The server's WELCOME carries its own; a
worker that differs refuses the job, naming the first difference, and the server logs it too."""

from __future__ import annotations

import hashlib
from importlib import metadata

from numpy_cnn.data import datasets
from numpy_cnn.net import Net

from . import protocol

WHAT = {"protocol": "protocol version", "package": "numpy_cnn version", "model": "model", "data": "data"}


class Disagreement(protocol.ProtocolError):
    """This worker's protocol, package, model or data differs from the server's."""


def package_version() -> str:
    try:
        return metadata.version("numpy_cnn")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def model_digest(net: Net) -> str:
    """The layer types, their settings and their parameter shapes, hashed; the weights don't count."""
    layers = [f"{layer!r}:{[p.shape for p in layer.parameters]}" for layer in net.layers]
    return f"{len(layers)} layers, sha256 " + hashlib.sha256("|".join(layers).encode()).hexdigest()[:16]


def data_digest(dataset: str) -> str:
    """The training set by its content: a built-in set by its verified files' SHA-256s, your own by
    the SHA-256 of its arrays (numpy_cnn/data/datasets.py)."""
    return datasets.digest(dataset)


def identity(net: Net, dataset: str) -> dict[str, str]:
    return {
        "protocol": str(protocol.VERSION),
        "package": package_version(),
        "model": model_digest(net),
        "data": data_digest(dataset),
    }


def check(server: dict, worker: dict) -> None:
    """Raise Disagreement naming the first way this worker differs from the server."""
    for key, what in WHAT.items():
        if server.get(key) != worker.get(key):
            raise Disagreement(
                f"{what} differs: the server has {server.get(key)}, this worker has {worker.get(key)}"
            )
