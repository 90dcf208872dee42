"""PyTorch as an oracle, when it is importable (a separate venv: pip install torch==2.13.0).

The same weights go into numpy_cnn and torch; values and gradients must agree. Torch is never a
dependency of numpy_cnn: without it these tests are skipped.
"""

from __future__ import annotations

import numpy as np
import pytest

from numpy_cnn import SGD, Adam, CrossEntropyLoss, MaxPool2d, Tensor, models

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
