"""BucketUpdates: the server's parameters in two buffers, and Adam run on one bucket at a time.

Adam is elementwise, so a step done bucket by bucket, after counting the step once, has the bits of
one done all at once (Optimizer.update_some). Each bucket's new values go into the spare buffer,
which then becomes the parameter's, so the values of the version the step started from stay whole
until the step ends: workers that take over a lost worker's share of the step get them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from numpy_cnn.optim import Optimizer


class BucketUpdates:
    """The optimizer's parameters (Tensors), a spare array for each, and the bucket plan."""

    def __init__(self, optimizer: Optimizer, buckets: list[list[int]]) -> None:
        self.optimizer, self.params, self.buckets = optimizer, optimizer.params, buckets
        self.bucket_of = {i: b for b, ids in enumerate(buckets) for i in ids}
        self.spare = [np.empty_like(p.data) for p in self.params]

    def begin(self, lr: float) -> None:
        """A new step: count it once (Adam's bias correction), at this learning rate."""
        self.optimizer.t += 1
        self.optimizer.lr = lr

    def apply(self, bucket: int, gradient: list[np.ndarray]) -> list[np.ndarray]:
        """Run the step on `bucket` with its summed gradient; returns its new values."""
        ids = self.buckets[bucket]
        for i, g in zip(ids, gradient):
            self.params[i].grad = g
        self.optimizer.update_some(ids, [self.spare[i] for i in ids])
        self._swap(ids)
        return [self.params[i].data for i in ids]

    def before(self, updated: Collection[int], buckets: Sequence[int]) -> list[np.ndarray]:
        """The parameters of `buckets`, bucket after bucket, as the step found them, `updated` being
        the buckets it has updated."""
        ids = [i for b in buckets for i in self.buckets[b]]
        return [self.spare[i] if self.bucket_of[i] in updated else self.params[i].data for i in ids]

    def roll_back(self, updated: Collection[int]) -> None:
        """Put back the values the step found in the `updated` buckets, and the step count. (Adam's
        moments of those buckets have moved: the job stops then, and its checkpoints hold good ones.)"""
        for b in updated:
            self._swap(self.buckets[b])
        self.optimizer.t -= 1

    def _swap(self, ids: list[int]) -> None:
        for i in ids:
            p = self.params[i]
            p.data, self.spare[i] = self.spare[i], p.data
