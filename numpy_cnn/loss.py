"""Softmax cross-entropy, averaged over the batch: the only place the gradient is scaled by 1/N."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    # log-sum-exp around the row maximum, so large logits cannot overflow
    z = logits - logits.max(axis=1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


class CrossEntropyLoss:
    """Mean over the batch of -log softmax(preds)[true class]; y is int labels (N,) or (N, K)."""

    def _targets(self, preds: np.ndarray, y: np.ndarray) -> np.ndarray:
        # labels -> one-hot (N, K) in the dtype of preds; (N, K) targets pass through
        if preds.ndim != 2:
            raise ValueError(f"preds must be (N, K) logits, got shape {preds.shape}")
        n, k = preds.shape
        y = np.asarray(y)
        if y.ndim == 2:
            if y.shape != preds.shape:
                raise ValueError(f"targets {y.shape} do not match preds {preds.shape}")
            return y.astype(preds.dtype, copy=False)
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be ints of shape ({n},), got {y.dtype} {y.shape}")
        if n and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"labels must lie in [0, {k}), got [{y.min()}, {y.max()}]")
        onehot = np.zeros_like(preds)
        onehot[np.arange(n), y] = 1
        return onehot

    def loss(self, preds: np.ndarray, y: np.ndarray) -> float:
        t = self._targets(preds, y)
        return float(-(t * log_softmax(preds)).sum() / preds.shape[0])

    def grad(self, preds: np.ndarray, y: np.ndarray, total: int | None = None) -> np.ndarray:
        """d loss / d preds; `total` replaces len(preds) as the divisor when preds are one shard of
        a larger batch, so the shards' gradients add up to the whole batch's."""
        t = self._targets(preds, y)
        p = np.exp(log_softmax(preds))
        # d/do of -sum(t log softmax(o)) is softmax(o) * sum(t) - t, and sum(t) = 1 per row
        p *= t.sum(axis=1, keepdims=True)
        p -= t
        p /= preds.shape[0] if total is None else total
        return p
