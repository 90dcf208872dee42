"""BucketUpdates: the server's parameters in two flat buffers, and Adam run on one bucket at a time.

The parameters lie end to end in a flat vector, bucket after bucket (numpy_cnn.buckets.Layout),
so a bucket is one span: one frame on the wire, one pass of each of Adam's operations. Adam is
elementwise, so a step done bucket by bucket, after counting the step once, has the bits of one
done all at once (Optimizer.update_span). Each bucket's new values go into the other buffer, which
then holds that bucket, so the values of the version the step started from stay whole until the
step ends: workers that take over a lost worker's share of the step get them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from numpy_cnn.buckets import Layout
from numpy_cnn.optim import Optimizer


class BucketUpdates:
    """The optimizer, two flat buffers of its parameters, and which of them holds each bucket's
    current values (the parameters' .data are views of it)."""

    def __init__(self, optimizer: Optimizer, layout: Layout, buffers: np.ndarray | None = None) -> None:
        """`buffers`: the two flat buffers, (2, layout.size), where they must lie (a file the
        workers on this machine map, memory.py); else new arrays."""
        self.optimizer, self.params, self.layout = optimizer, optimizer.params, layout
        if buffers is None:
            buffers = np.empty((2, layout.size), self.params[0].data.dtype)
        self.flat = [buffers[0], buffers[1]]
        self.views = [layout.views(flat) for flat in self.flat]
        for p, view in zip(self.params, self.views[0]):
            view[...] = p.data
            p.data = view  # loading a checkpoint writes into it (Net.load_arrays)
        self.side = [0] * len(layout.plan)  # the buffer that holds each bucket's current values
        optimizer.flatten(layout)

    def begin(self, lr: float) -> None:
        """A new step: count it once (Adam's bias correction), at this learning rate."""
        self.optimizer.t += 1
        self.optimizer.lr = lr

    def apply(self, bucket: int, gradient: np.ndarray) -> np.ndarray:
        """Run the step on `bucket` with its summed gradient (flat); returns its new values (flat)."""
        span, side = self.layout.span(bucket), self.side[bucket]
        for i, g in zip(self.layout.plan[bucket], self.layout.bucket_views(bucket, gradient)):
            self.params[i].grad = g  # the step's gradient, as a serial optimizer would have it
        self.optimizer.update_span(span, gradient, self.flat[side][span], self.flat[1 - side][span])
        self._swap(bucket)
        return self.flat[1 - side][span]

    def before(self, updated: Collection[int], buckets: Sequence[int]) -> list[np.ndarray]:
        """The values of `buckets` (flat, one array each) as the step found them, `updated` being
        the buckets it has updated."""
        return [
            self.flat[side][self.layout.span(b)] for b, side in zip(buckets, self.sides(updated, buckets))
        ]

    def sides(self, updated: Collection[int], buckets: Sequence[int]) -> list[int]:
        """Which buffer holds each of `buckets` as the step found it (see before)."""
        return [self.side[b] ^ (b in updated) for b in buckets]

    def roll_back(self, updated: Collection[int]) -> None:
        """Put back the values the step found in the `updated` buckets, and the step count. (Adam's
        moments of those buckets have moved: the job stops then, and its checkpoints hold good ones.)"""
        for b in updated:
            self._swap(b)
        self.optimizer.t -= 1

    def _swap(self, bucket: int) -> None:
        self.side[bucket] ^= 1
        for i in self.layout.plan[bucket]:
            self.params[i].data = self.views[self.side[bucket]][i]
