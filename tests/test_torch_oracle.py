"""PyTorch as an oracle, when it is importable (a separate venv: pip install torch==2.13.0).

The same weights go into numpy_cnn and torch; values and gradients must agree. Torch is never a
dependency of numpy_cnn: without it these tests are skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

from numpy_cnn import (
    SGD,
    Adam,
    AvgPool2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    LeakyReLU,
    MaxPool2d,
    Sigmoid,
    Tanh,
    Tensor,
    models,
)

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_conv_net(net):
    """The conv-net as torch modules holding copies of `net`'s weights (Linear weights transposed)."""
    mods = []
    for layer in net.layers:
        name = type(layer).__name__
        if name == "Conv2d":
            m = torch.nn.Conv2d(
                layer.in_channels, layer.out_channels, layer.k_size, layer.stride, layer.padding
            )
            m.weight.data = torch.tensor(layer.params["weight"].data)
            m.bias.data = torch.tensor(layer.params["bias"].data)
        elif name == "Linear":
            m = torch.nn.Linear(layer.in_features, layer.out_features)
            m.weight.data = torch.tensor(layer.params["weight"].data.T.copy())
            m.bias.data = torch.tensor(layer.params["bias"].data)
        elif name == "MaxPool2d":
            m = torch.nn.MaxPool2d(layer.k_size, layer.stride)
        elif name == "ReLU":
            m = torch.nn.ReLU()
        else:
            m = torch.nn.Flatten()
        mods.append(m)
    return torch.nn.Sequential(*mods)


def test_conv_net_values_and_gradients_match_torch_in_float64():
    net = models.build("conv-net", seed=0, dtype=np.float64)
    for p in net.parameters:  # non-zero biases, so their gradients are exercised through the net
        p.data += np.random.default_rng(1).standard_normal(p.shape) * 0.01
    tnet = torch_conv_net(net).double()
    rng = np.random.default_rng(2)
    x, y = rng.random((5, 1, 28, 28)), rng.integers(0, 10, 5)
    loss_f = CrossEntropyLoss()
    preds = net.forward(x)
    loss = loss_f.loss(preds, y)
    dx = net.backward(loss_f.grad(preds, y), input_grad=True)

    tx = torch.tensor(x, requires_grad=True)
    tpreds = tnet(tx)
    tloss = F.cross_entropy(tpreds, torch.tensor(y))
    tloss.backward()
    np.testing.assert_allclose(preds, tpreds.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-14)
    tparams = [p for m in tnet if hasattr(m, "weight") for p in (m.weight, m.bias)]
    for ours, theirs in zip(net.parameters, tparams):
        expected = theirs.grad.numpy()
        expected = expected.T if ours.grad.ndim == 2 else expected
        np.testing.assert_allclose(ours.grad, expected, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("k,s", [((3, 3), (2, 2)), ((2, 3), (3, 1)), ((2, 2), (2, 2))])
def test_maxpool_matches_torch(k, s):
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 8))
    pool = MaxPool2d(k, s)
    out = pool.forward(x)
    g = np.random.default_rng(4).standard_normal(out.shape)
    tx = torch.tensor(x, requires_grad=True)
    tout = F.max_pool2d(tx, k, s)
    tout.backward(torch.tensor(g))
    np.testing.assert_array_equal(out, tout.detach().numpy())
    np.testing.assert_allclose(pool.backward(g), tx.grad.numpy(), rtol=1e-15)


def against_torch(layer, fn, x: np.ndarray, seed: int = 6):
    """(ours, torch's) output and input gradient of `layer` and `fn` for the same x and out-gradient."""
    out = layer.forward(x)
    g = np.random.default_rng(seed).standard_normal(out.shape).astype(x.dtype)
    tx = torch.tensor(x, requires_grad=True)
    tout = fn(tx)
    tout.backward(torch.tensor(g))
    return (out, layer.backward(g)), (tout.detach().numpy(), tx.grad.numpy())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "layer,fn",
    [
        (Tanh(), torch.tanh),
        (Sigmoid(), torch.sigmoid),
        (LeakyReLU(), F.leaky_relu),
        (LeakyReLU(0.2), lambda t: F.leaky_relu(t, 0.2)),
        (Flatten(), lambda t: torch.flatten(t, 1)),
    ],
    ids=repr,
)
def test_elementwise_layers_match_torch(layer, fn, dtype):
    x = (np.random.default_rng(7).standard_normal((4, 3, 5)) * 4).astype(dtype)
    ours, theirs = against_torch(layer, fn, x)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype == dtype
        # a few ulps of the largest value: torch's vectorised tanh rounds a little differently,
        # and 1 - tanh^2 keeps that absolute error
        assert_close(a, b, rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "k,s,p",
    [((2, 2), None, (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (1, 2), (0, 1)), ((2, 3), (3, 1), (1, 0))],
)
def test_avgpool_matches_torch_counting_padding(k, s, p, dtype):
    x = np.random.default_rng(8).standard_normal((2, 3, 9, 8)).astype(dtype)
    (out, dx), (tout, tdx) = against_torch(
        AvgPool2d(k, s, p), lambda t: F.avg_pool2d(t, k, s, p, count_include_pad=True), x
    )
    np.testing.assert_array_equal(out, tout)  # the same sums, in the same order, then one division
    # overlapping windows add into a pixel in another order than torch's
    assert_close(dx, tdx, rtol=4 * np.finfo(dtype).eps)


class Draws:
    """A stand-in Generator whose random() returns fixed uniforms, to impose torch's mask."""

    def __init__(self, u: np.ndarray) -> None:
        self.u = u

    def random(self, shape):
        assert shape == self.u.shape
        return self.u


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.7])
def test_dropout_scaling_matches_torch_given_its_mask(p, dtype):
    x = np.random.default_rng(9).uniform(0.5, 2, (8, 3, 4, 5)).astype(dtype)  # no zeros
    torch.manual_seed(0)
    tx = torch.tensor(x, requires_grad=True)
    tout = F.dropout(tx, p, training=True)
    g = np.random.default_rng(10).standard_normal(x.shape).astype(dtype)
    tout.backward(torch.tensor(g))
    keep = tout.detach().numpy() != 0
    layer = Dropout(p, rng=Draws(keep.astype(np.float64)))  # uniform 1 keeps a unit, 0 drops it
    np.testing.assert_array_equal(layer.forward(x), tout.detach().numpy())
    np.testing.assert_array_equal(layer.backward(g), tx.grad.numpy())


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda ps: Adam(ps, lr=0.01), lambda ps: torch.optim.Adam(ps, lr=0.01, foreach=False)),
        (lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    ],
)
def test_optimizers_match_torch_in_float32(ours, theirs):
    rng = np.random.default_rng(5)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(4, 3), (3,)]]
    params = [Tensor(a) for a in init]
    tparams = [torch.tensor(a, requires_grad=True) for a in init]
    opt, topt = ours(params), theirs(tparams)
    for _ in range(10):
        for p, tp in zip(params, tparams):
            g = rng.standard_normal(p.shape).astype(np.float32)
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        opt.update()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=2e-6, atol=1e-7)
