"""Net: the seed's usage verbatim, parameter order, whole-net gradients and .npz save/load."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, numerical_grad

from numpy_cnn import Adam, CrossEntropyLoss, Net, default_dtype, layers


def test_seed_usage_runs_verbatim_and_learns():
    from numpy_cnn import CrossEntropyLoss, Net, layers  # the seed's import line

    net = Net(
        [
            layers.Conv2d(1, 6, k_size=(5, 5), stride=(1, 1), padding=(2, 2)),
            layers.ReLU(),
            layers.MaxPool2d(k_size=[2, 2], stride=[2, 2]),
            layers.Reshape(-1),
            layers.Linear(1176, 10),
        ]
    )
    loss_f = CrossEntropyLoss()
    optimizer = Adam(net.parameters)
    rng = np.random.default_rng(0)
    X = rng.random((16, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 16)
    first = None
    for _ in range(30):
        preds = net.forward(X)
        l = loss_f.loss(preds, y)  # noqa: E741 - the seed's name
        first = first if first is not None else l
        net.backward(loss_f.grad(preds, y))
        optimizer.update()
    assert preds.shape == (16, 10)
    assert l < 0.5 * first


def small_net(rng):
    return Net(
        [
            layers.Conv2d(2, 3, k_size=3, stride=1, padding=1, rng=rng),
            layers.ReLU(),
            layers.MaxPool2d(2, 2),
            layers.Conv2d(3, 2, k_size=(2, 3), stride=(1, 2), rng=rng),
            layers.Reshape(-1),
            layers.Linear(4, 3, rng=rng),
        ]
    )


def test_whole_net_gradient_matches_central_differences():
    rng = np.random.default_rng(1)
    with default_dtype(np.float64):
        net = small_net(rng)
    x, y = rng.standard_normal((2, 2, 6, 6)), np.array([0, 2])
    loss_f = CrossEntropyLoss()

    def f():
        return loss_f.loss(net.forward(x), y)

    net.backward(loss_f.grad(net.forward(x), y))
    grads = [p.grad.copy() for p in net.parameters]
    for g, p in zip(grads, net.parameters):
        assert_close(g, numerical_grad(f, p.data), rtol=1e-6)


def test_parameters_are_every_tensor_in_layer_order():
    net = small_net(np.random.default_rng(2))
    names = list(net.named_parameters())
    assert names == ["0.weight", "0.bias", "3.weight", "3.bias", "5.weight", "5.bias"]
    assert [id(p) for p in net.parameters] == [id(p) for p in net.named_parameters().values()]


def test_save_load_round_trip(tmp_path):
    a, b = small_net(np.random.default_rng(3)), small_net(np.random.default_rng(4))
    path = tmp_path / "model.npz"
    a.save(path)
    with np.load(path) as f:
        assert sorted(f.files) == sorted(a.named_parameters())
    ids = [id(p.data) for p in b.parameters]
    b.load(path)
    assert [id(p.data) for p in b.parameters] == ids  # in place: an optimizer keeps its references
    for p, q in zip(a.parameters, b.parameters):
        np.testing.assert_array_equal(p.data, q.data)


def test_load_rejects_another_model(tmp_path):
    path = tmp_path / "other.npz"
    Net([layers.Linear(3, 2)]).save(path)
    with pytest.raises(ValueError, match="do not match"):
        small_net(np.random.default_rng(5)).load(path)
    np.savez(path, **{"0.weight": np.zeros((2, 2)), "0.bias": np.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        Net([layers.Linear(3, 2)]).load(path)


def test_input_gradient_only_on_request():
    rng = np.random.default_rng(6)
    with default_dtype(np.float64):
        net = small_net(rng)
    x, y = rng.standard_normal((2, 2, 6, 6)), np.array([1, 0])
    loss_f = CrossEntropyLoss()
    assert net.backward(loss_f.grad(net.forward(x), y)) is None
    dx = net.backward(loss_f.grad(net.forward(x), y), input_grad=True)
    assert_close(dx, numerical_grad(lambda: loss_f.loss(net.forward(x), y), x), rtol=1e-6)


def test_train_and_eval_set_every_layer_and_return_the_net():
    net = small_net(np.random.default_rng(7))
    assert net.training and all(layer.training for layer in net.layers)
    assert net.eval() is net
    assert not net.training and not any(layer.training for layer in net.layers)
    assert net.train() is net
    assert net.training and all(layer.training for layer in net.layers)
    assert net.train(False) is net and not net.layers[0].training


def dropout_net(rng):
    return Net(
        [
            layers.Linear(6, 8, rng=rng),
            layers.Tanh(),
            layers.Dropout(0.5),
            layers.Linear(8, 5, rng=rng),
            layers.Dropout(0.3),
            layers.Linear(5, 3, rng=rng),
        ]
    )


def test_eval_never_drops():
    rng = np.random.default_rng(8)
    net = dropout_net(rng)
    plain = Net([layer for layer in net.layers if not isinstance(layer, layers.Dropout)])
    x = rng.random((10, 6), dtype=np.float32)
    net.eval().set_noise(seed=0, epoch=0, index=0)
    np.testing.assert_array_equal(net.forward(x), plain.forward(x))
    assert (net.train().forward(x) != plain.forward(x)).any()


def test_dropout_net_gradient_matches_central_differences_with_a_key():
    rng = np.random.default_rng(9)
    with default_dtype(np.float64):
        net = dropout_net(rng)
    x, y = rng.standard_normal((4, 6)), np.array([0, 2, 1, 1])
    loss_f = CrossEntropyLoss()
    net.set_noise(seed=3, epoch=1, index=4)  # each forward below draws the same masks

    def f():
        return loss_f.loss(net.forward(x), y)

    dx = net.backward(loss_f.grad(net.forward(x), y), input_grad=True)
    grads = [p.grad.copy() for p in net.parameters]
    for g, p in zip(grads, net.parameters):
        assert_close(g, numerical_grad(f, p.data), rtol=1e-6)
    assert_close(dx, numerical_grad(f, x), rtol=1e-6)


def test_masks_follow_the_sample_not_the_shard():
    # elementwise layers only, so every row's output depends on nothing but its own draws
    net = Net([layers.Tanh(), layers.Dropout(0.5), layers.LeakyReLU(), layers.Dropout(0.2)])
    x = np.random.default_rng(10).standard_normal((64, 3, 4)).astype(np.float32)
    g = np.random.default_rng(11).standard_normal(x.shape).astype(np.float32)
    whole = net.set_noise(seed=5, epoch=2, index=17).forward(x)
    dwhole = net.backward(g, input_grad=True)
    for lo, hi in [(0, 16), (16, 32), (32, 48), (48, 64), (0, 1), (21, 43)]:
        net.set_noise(seed=5, epoch=2, index=17, offset=lo)
        np.testing.assert_array_equal(net.forward(x[lo:hi]), whole[lo:hi])
        np.testing.assert_array_equal(net.backward(g[lo:hi], input_grad=True), dwhole[lo:hi])
    assert (net.set_noise(seed=5, epoch=2, index=18).forward(x) != whole).any()


def test_noise_key_must_be_non_negative():
    with pytest.raises(ValueError, match="non-negative"):
        Net([layers.Dropout(0.5)]).set_noise(seed=0, epoch=0, index=0, offset=-1)


def test_clear_noise_goes_back_to_each_layers_rng():
    x = np.ones((4, 30))
    net = Net([layers.Dropout(0.5, rng=np.random.default_rng(12))])
    keyed = net.set_noise(seed=0, epoch=0, index=0).forward(x)
    np.testing.assert_array_equal(net.forward(x), keyed)
    assert net.clear_noise() is net and net.noise is None
    expected = Net([layers.Dropout(0.5, rng=np.random.default_rng(12))]).forward(x)
    np.testing.assert_array_equal(net.forward(x), expected)
