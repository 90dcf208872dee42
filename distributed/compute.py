"""One job of a worker: the gradient of its micro-shards, streamed to the server bucket by bucket.

Every owned micro-shard has its own replica of the net (sharing the weight arrays, owning its
gradients and caches). The job runs each shard's forward and backward pass in turn, as serial
training does (a shard's caches are still warm for its backward pass). During the last shard's
backward pass, as soon as the lowest layer of a bucket (numpy_cnn.buckets) is done, the bucket's
gradient is final for every shard: it is summed over each owned node of the shard tree and
handed on, while the backward pass goes on below. Each shard does exactly the arithmetic of
numpy_cnn.shards.shard_gradient, so the bits are serial training's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from numpy_cnn.buckets import Layout, lowest_layers
from numpy_cnn.layers import Columns, Conv2d
from numpy_cnn.loss import CrossEntropyLoss
from numpy_cnn.models import build
from numpy_cnn.net import Net
from numpy_cnn.shards import Node, leaves_of, tree_sum

# what a job hands on for each bucket: (bucket, its node sums in node order, seconds since the start)
Emit = Callable[[int, list[np.ndarray], float], None]


class ShardJob:
    """The replicas and gradient buffers of one worker's micro-shards, kept from job to job."""

    def __init__(
        self, model: str, seed: int, dtype: str, layout: Layout, data=None, area: dict | None = None
    ) -> None:
        """`area`: tree node -> where its gradient (flat) must lie, in the gradient file shared
        with the server (distributed/memory.py): each shard's gradient and each node's sum are
        then written there, where the server reads them."""
        self.model, self.seed, self.dtype = model, seed, dtype
        self.data = data  # your own model is built for the data's sample shape and classes
        self.layout = layout
        self.area = area
        self.replicas: dict[int, Net] = {}  # micro-shard -> its replica (made on first use)
        # micro-shard -> its gradient, flat (Layout): backward writes straight into views of it
        self.leaf_grads: dict[int, np.ndarray] = {}
        self.scratch: list[dict] = [{} for _ in layout.plan]  # the tree's inner sums, per bucket
        if area is not None:  # an inner node's sums go straight to its place in the file
            for b in range(len(layout.plan)):
                span = layout.span(b)
                self.scratch[b] = {node: [flat[span]] for node, flat in area.items() if node[1] - node[0] > 1}
        self.loss = CrossEntropyLoss()
        self.lowest: list[int] | None = None

    def replica(self, k: int) -> Net:
        net = self.replicas.get(k)
        if net is None:
            net = self.replicas[k] = build(self.model, seed=self.seed, dtype=self.dtype, data=self.data)
            if self.area is None:
                flat = self.leaf_grads[k] = np.zeros(self.layout.size, net.parameters[0].dtype)
            else:
                flat = self.leaf_grads[k] = self.area[(k, k + 1)]
            for p, g in zip(net.parameters, self.layout.views(flat)):
                p.grad = g
            if self.lowest is None:
                self.lowest = lowest_layers(net, self.layout.plan)
        return net

    def lower(self, k: int, x: np.ndarray) -> np.ndarray | Columns:
        """Micro-shard k's input as far as it goes without the weights: a first convolution's
        columns (layers.Conv2d.columns), which `forward` takes in place of x; else x itself."""
        first = self.replica(k).layers[0]
        return first.columns(x) if isinstance(first, Conv2d) and len(x) else x

    def forward(
        self,
        k: int,
        weights: Sequence[np.ndarray],
        x: np.ndarray | Columns,
        y: np.ndarray,
        total: int,
        noise: tuple,
    ) -> tuple[float, int, np.ndarray | None]:
        """Micro-shard k's forward pass and its loss: (sum of losses, correct, d loss / d output);
        an empty shard (a short last batch) has zero gradients and no backward pass. x: the
        samples, or what `lower` made of them."""
        net = self.replica(k)
        for p, w in zip(net.parameters, weights):
            p.data = w  # forward and backward only read the weights
        net.set_noise(*noise)
        if len(y) == 0:
            for p in net.parameters:
                p.grad.fill(0)
            return 0.0, 0, None
        preds = net.forward(x)
        loss = self.loss.loss(preds, y) * len(y)
        return loss, int(np.sum(preds.argmax(axis=1) == y)), self.loss.grad(preds, y, total=total)

    def backward(
        self,
        k: int,
        grad: np.ndarray | None,
        nodes: Sequence[Node],
        wanted: Sequence[int],
        started: float,
        emit: Emit,
        progress: Callable[[], None],
    ) -> None:
        """Micro-shard k's backward pass from `grad`, d loss / d output (None: an empty shard, whose
        gradients are zero), layer by layer, as Net.backward runs it. After the lowest layer of a
        bucket in `wanted`, the bucket's sums over `nodes` go to `emit`: every other shard under
        them must have run its backward pass already."""
        layers = self.replicas[k].layers
        for i in reversed(range(len(layers))):
            if grad is not None:  # the same calls as Net.backward
                grad = layers[i].backward(grad, input_grad=i > 0)
            for b, lowest in enumerate(self.lowest):
                if lowest == i and b in wanted:
                    emit(b, self.sums(b, leaves_of(nodes), nodes), time.monotonic() - started)
                    progress()

    def sums(self, b: int, leaves: list[int], nodes: Sequence[Node]) -> list[np.ndarray]:
        """Bucket b's gradient (flat) summed over each of `nodes` in the fixed tree, node after node."""
        span = self.layout.span(b)
        parts = {(k, k + 1): [self.leaf_grads[k][span]] for k in leaves}
        return [tree_sum(node, parts, self.scratch[b])[0] for node in nodes]
