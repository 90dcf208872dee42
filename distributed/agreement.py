"""What every process of a job must agree on before it computes: the wire protocol, the package
version, the model's definition, and the training data. The server's WELCOME carries its own; a
worker that differs refuses the job, naming the first difference, and the server logs it too. A
worker that cannot build the model at all (your own model's file or module does not import there)
refuses the same way: a restart would fail again."""

from __future__ import annotations

import hashlib
from importlib import metadata

from numpy_cnn.data import datasets
from numpy_cnn.models import ModelError, build
from numpy_cnn.net import Net

from . import protocol

WHAT = {"protocol": "protocol version", "package": "numpy_cnn version", "model": "model", "data": "data"}
MAX_LAYERS_CHARS = 30_000  # the per-layer description rides in WELCOME's header (at most 64 KiB)


class Disagreement(protocol.ProtocolError):
    """This worker's protocol, package, model or data differs from the server's."""


def package_version() -> str:
    try:
        return metadata.version("numpy_cnn")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def model_layers(net: Net) -> list[list]:
    """Per layer: its settings, and each parameter's name, shape and a digest of its initial values."""
    return [
        [repr(layer), [[k, list(p.shape), _sha(p.data.tobytes())] for k, p in layer.params.items()]]
        for layer in net.layers
    ]


def model_digest(net: Net) -> str:
    """The layer types, their settings, their parameters' shapes and initial values, hashed."""
    return f"{len(net.layers)} layers, sha256 " + _sha(repr(model_layers(net)).encode())


def _sha(data) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def data_digest(dataset: str) -> str:
    """The training set by its content: a built-in set by its verified files' SHA-256s, your own by
    the SHA-256 of its arrays (numpy_cnn/data/datasets.py)."""
    return datasets.digest(dataset)


def identity(net: Net, dataset: str) -> dict:
    layers = model_layers(net)
    return {
        "protocol": str(protocol.VERSION),
        "package": package_version(),
        "model": model_digest(net),
        "data": data_digest(dataset),
        # to name the first difference; a net too long to describe in a header is only hashed
        "layers": layers if len(repr(layers)) <= MAX_LAYERS_CHARS else None,
    }


def replica(config, data, expect: dict) -> Net:
    """This worker's net for the job (JobConfig `config`), checked against the server's `expect`."""
    try:
        net = build(config.model, seed=config.seed, dtype=config.dtype, data=data)
    except ModelError as e:  # this machine cannot build it: a restart could not either
        raise Disagreement(f"{e} (on this worker)") from None
    check(expect, identity(net, config.dataset), config.model)
    return net


def check(server: dict, worker: dict, model: str = "") -> None:
    """Raise Disagreement naming the first way this worker differs from the server."""
    for key, what in WHAT.items():
        if server.get(key) == worker.get(key):
            continue
        if key == "model":
            named = f"model {model}" if model else "model"
            raise Disagreement(f"{named} differs: {first_difference(server, worker)}")
        raise Disagreement(
            f"{what} differs: the server has {server.get(key)}, this worker has {worker.get(key)}"
        )


def first_difference(server: dict, worker: dict) -> str:
    """Where two nets first differ, from their identities' layer descriptions."""
    ours, theirs = worker.get("layers"), server.get("layers")
    if not (isinstance(ours, list) and isinstance(theirs, list)):
        return f"the server has {server.get('model')}, this worker has {worker.get('model')}"
    for i, (there, here) in enumerate(zip(theirs, ours)):
        if there[0] != here[0]:
            return f"net.layers[{i}] is {there[0]} on the server, {here[0]} on this worker"
        for (name, shape, sha), (name2, shape2, sha2) in zip(there[1], here[1]):
            if (name, shape) != (name2, shape2):
                return (
                    f"net.layers[{i}] ({here[0]}) has parameter {name} {tuple(shape)} on the server, "
                    f"{name2} {tuple(shape2)} on this worker"
                )
            if sha != sha2:
                return (
                    f"parameter {i}.{name} of net.layers[{i}] ({here[0]}) has other initial values on "
                    "the server than on this worker (the same seed, drawn differently)"
                )
        if len(there[1]) != len(here[1]):
            return (
                f"net.layers[{i}] ({here[0]}) has {len(there[1])} parameters on the server, "
                f"{len(here[1])} on this worker"
            )
    if len(theirs) != len(ours):
        return f"the server's net has {len(theirs)} layers, this worker's {len(ours)}"
    return f"the server has {server.get('model')}, this worker has {worker.get('model')}"
