"""CrossEntropyLoss against central differences and the textbook formula."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, numerical_grad

from numpy_cnn import CrossEntropyLoss


@pytest.mark.parametrize("n", [1, 5])
def test_gradient_matches_central_differences(n):
    rng = np.random.default_rng(0)
    preds, y = rng.standard_normal((n, 10)), rng.integers(0, 10, n)
    loss_f = CrossEntropyLoss()
    assert_close(loss_f.grad(preds, y), numerical_grad(lambda: loss_f.loss(preds, y), preds))


def test_value_matches_textbook_formula():
    rng = np.random.default_rng(1)
    preds, y = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    p = np.exp(preds) / np.exp(preds).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(p[np.arange(6), y]))
    assert CrossEntropyLoss().loss(preds, y) == pytest.approx(expected, rel=1e-12)


def test_one_hot_targets_equal_int_labels():
    rng = np.random.default_rng(2)
    preds, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    onehot = np.eye(3)[y]
    loss_f = CrossEntropyLoss()
    assert loss_f.loss(preds, onehot) == loss_f.loss(preds, y)
    np.testing.assert_array_equal(loss_f.grad(preds, onehot), loss_f.grad(preds, y))


def test_soft_targets_gradient():
    rng = np.random.default_rng(3)
    preds, t = rng.standard_normal((4, 3)), rng.dirichlet(np.ones(3), 4)
    loss_f = CrossEntropyLoss()
    assert_close(loss_f.grad(preds, t), numerical_grad(lambda: loss_f.loss(preds, t), preds))


def test_huge_logits_are_stable():
    preds = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]], dtype=np.float32)
    loss_f = CrossEntropyLoss()
    assert loss_f.loss(preds, np.array([0, 0])) == pytest.approx(1e4, rel=1e-6)
    g = loss_f.grad(preds, np.array([0, 0]))
    assert np.isfinite(g).all() and g.dtype == np.float32


def test_does_not_modify_preds():
    preds = np.random.default_rng(4).standard_normal((3, 5)).astype(np.float32)
    before = preds.copy()
    CrossEntropyLoss().grad(preds, np.array([0, 1, 2]))
    np.testing.assert_array_equal(preds, before)


@pytest.mark.parametrize("y", [np.array([0, 3]), np.array([0.0, 1.0]), np.array([0]), np.zeros((2, 2))])
def test_bad_labels_are_clear_errors(y):
    with pytest.raises(ValueError):
        CrossEntropyLoss().loss(np.zeros((2, 3)), y)
