"""Buckets: a net's parameters grouped in the order the backward pass finishes them.

A data-parallel trainer can send a bucket's gradient as soon as the backward pass has gone
below its lowest layer, while the layers under it are still being computed, and update it
as soon as every worker's share of it is in. The plan is a pure function of the net's layers
and parameter shapes, so every process that builds the same model agrees on it.

A Layout lays the parameters end to end in one flat vector, bucket after bucket, so that a
bucket is one contiguous span: one frame on the wire, one sum, one pass of each of the
optimizer's elementwise operations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

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


def largest_bytes(net: Net, cap: float = BUCKET_BYTES) -> int:
    """The bytes of the largest bucket of plan(net, cap): the largest array a message carries, a
    bucket's values or gradient sum, flat (Layout)."""
    return max(sum(net.parameters[i].data.nbytes for i in ids) for ids in plan(net, cap))


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


class Layout:
    """Where each parameter lies in a flat vector that holds the buckets one after another:
    bucket b is the span [start[b], start[b + 1]), its parameters end to end in ascending order."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], plan: list[list[int]]) -> None:
        if sorted(i for ids in plan for i in ids) != list(range(len(shapes))):
            raise ValueError(f"the bucket plan {plan} does not hold each of {len(shapes)} parameters once")
        self.shapes = [tuple(s) for s in shapes]
        self.plan = plan
        self.offset = [0] * len(shapes)  # parameter -> where it starts
        self.start = [0]
        for ids in plan:
            at = self.start[-1]
            for i in ids:
                self.offset[i] = at
                at += math.prod(self.shapes[i])
            self.start.append(at)
        self.size = self.start[-1]

    @classmethod
    def of(cls, net: Net, plan: list[list[int]]) -> Layout:
        return cls([p.shape for p in net.parameters], plan)

    def span(self, b: int) -> slice:
        return slice(self.start[b], self.start[b + 1])

    def length(self, b: int) -> int:
        """How many values bucket b holds."""
        return self.start[b + 1] - self.start[b]

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        """Each parameter's view of a whole flat vector, in parameter order."""
        return [self._view(flat, self.offset[i], i) for i in range(len(self.shapes))]

    def bucket_views(self, b: int, values: np.ndarray) -> list[np.ndarray]:
        """The views of bucket b's parameters (in the bucket's order) of `values`, the bucket alone."""
        return [self._view(values, self.offset[i] - self.start[b], i) for i in self.plan[b]]

    def _view(self, flat: np.ndarray, at: int, i: int) -> np.ndarray:
        return flat[at : at + math.prod(self.shapes[i])].reshape(self.shapes[i])
