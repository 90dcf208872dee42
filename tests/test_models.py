"""The seed's two models: shapes, exact definitions, and seeding."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_cnn import CrossEntropyLoss, layers, models


@pytest.mark.parametrize("name,shape", [("fc-net", (784,)), ("conv-net", (1, 28, 28))])
def test_output_is_n_by_10(name, shape):
    net = models.build(name, seed=0)
    assert models.input_shape(name) == shape
    x = np.random.default_rng(0).random((3, *shape), dtype=np.float32)
    assert net.forward(x).shape == (3, 10)


def test_definitions_are_the_seeds():
    conv = models.build("conv-net")
    assert [repr(layer) for layer in conv.layers] == [
        "Conv2d(1, 6, k_size=(5, 5), stride=(1, 1), padding=(2, 2))",
        "ReLU()",
        "MaxPool2d(k_size=(2, 2), stride=(2, 2))",
        "Conv2d(6, 16, k_size=(5, 5), stride=(1, 1), padding=(0, 0))",
        "ReLU()",
        "MaxPool2d(k_size=(2, 2), stride=(2, 2))",
        "Reshape(-1)",
        "Linear(400, 120)",
        "ReLU()",
        "Linear(120, 84)",
        "ReLU()",
        "Linear(84, 10)",
    ]
    fc = models.build("fc-net")
    assert [repr(layer) for layer in fc.layers] == [
        "Linear(784, 400)",
        "ReLU()",
        "Linear(400, 100)",
        "ReLU()",
        "Linear(100, 10)",
    ]
    assert all(isinstance(p.data, np.ndarray) and p.dtype == np.float32 for p in conv.parameters)


@pytest.mark.parametrize("name", ["fc-net", "conv-net"])
def test_same_seed_same_weights_and_losses(name):
    shape = models.input_shape(name)
    rng = np.random.default_rng(1)
    x, y = rng.random((8, *shape), dtype=np.float32), rng.integers(0, 10, 8)
    a, b, c = models.build(name, seed=7), models.build(name, seed=7), models.build(name, seed=8)
    for p, q in zip(a.parameters, b.parameters):
        assert p.data.tobytes() == q.data.tobytes()
    assert any(p.data.tobytes() != q.data.tobytes() for p, q in zip(a.parameters, c.parameters))
    loss_f = CrossEntropyLoss()
    assert loss_f.loss(a.forward(x), y) == loss_f.loss(b.forward(x), y)


def test_xavier_bounds_and_zero_bias():
    net = models.build("conv-net", seed=3)
    conv1 = net.layers[0].params
    limit = np.sqrt(6 / (1 * 25 + 6 * 25))
    w = conv1["weight"].data
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.9 * limit
    assert not conv1["bias"].data.any()
    fc1 = models.build("fc-net").layers[0].params["weight"].data
    assert np.abs(fc1).max() <= np.sqrt(6 / (784 + 400))


def test_float64_build_has_the_same_draws():
    a, b = models.build("fc-net", seed=2), models.build("fc-net", seed=2, dtype=np.float64)
    assert b.parameters[0].dtype == np.float64
    np.testing.assert_array_equal(a.parameters[0].data, b.parameters[0].data.astype(np.float32))


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="conv-net, fc-net"):
        models.build("resnet")
    assert isinstance(models.build("conv-net").layers[0], layers.Conv2d)
