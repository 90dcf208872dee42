"""Buckets: a net's parameters grouped in the order the backward pass finishes them.

A data-parallel trainer can send a bucket's gradient as soon as the backward pass has gone
below its lowest layer, while the layers under it are still being computed, and update it
as soon as every worker's share of it is in. The plan is a pure function of the net's layers
and parameter shapes, so every process that builds the same model agrees on it.
"""

from __future__ import annotations

from .net import Net

BUCKET_BYTES = 64 * 1024  # neighbours are merged up to this size; a larger layer is a bucket alone


def plan(net: Net, cap: float = BUCKET_BYTES) -> list[list[int]]:
    """Parameter indices (into net.parameters) by bucket, the last layer's bucket first.

    A layer's parameters are never split; walking the layers from the last, a layer joins the
    current bucket while the bucket stays within `cap` bytes. For the conv-net that gives
    [fc3, fc2], [fc1], [conv2, conv1]. Within a bucket, indices ascend (parameter order).
    """
    buckets: list[list[int]] = []
    current: list[int] = []
    size = 0
    for ids in reversed(layer_params(net)):
        nbytes = sum(net.parameters[i].data.nbytes for i in ids)
        if current and size + nbytes > cap:
            buckets.append(sorted(current))
            current, size = [], 0
        current += ids
        size += nbytes
    if current:
        buckets.append(sorted(current))
    return buckets


def layer_params(net: Net) -> list[list[int]]:
    """The parameter indices of each layer that has parameters, in layer order."""
    out, index = [], 0
    for layer in net.layers:
        n = len(layer.parameters)
        if n:
            out.append(list(range(index, index + n)))
        index += n
    return out


def lowest_layers(net: Net, buckets: list[list[int]]) -> list[int]:
    """For each bucket, the index of its lowest layer: once the backward pass has run that layer,
    the bucket's gradient is final."""
    layer_of = [i for i, layer in enumerate(net.layers) for _ in layer.parameters]
    return [min(layer_of[p] for p in bucket) for bucket in buckets]
