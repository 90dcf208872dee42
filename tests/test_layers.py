"""Every layer against central differences in float64, and against a naive loop oracle."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, numerical_grad

from numpy_cnn import (
    AvgPool2d,
    Conv2d,
    Dropout,
    Flatten,
    LeakyReLU,
    Linear,
    MaxPool2d,
    ReLU,
    Reshape,
    Sigmoid,
    Tanh,
    default_dtype,
)


def check_layer(layer, x: np.ndarray, seed: int = 0) -> None:
    """Analytic input and parameter gradients of sum(layer(x) * r) match central differences."""
    rng = np.random.default_rng(seed)
    r = rng.standard_normal(layer.forward(x).shape)

    def f() -> float:
        return float(np.sum(layer.forward(x) * r))

    layer.forward(x)
    r_before = r.copy()
    dx = layer.backward(r)
    np.testing.assert_array_equal(r, r_before, err_msg="backward modified its input gradient")
    assert dx.shape == x.shape and dx.dtype == x.dtype
    grads = {k: p.grad.copy() for k, p in layer.params.items()}
    assert_close(dx, numerical_grad(f, x))
    for k, p in layer.params.items():
        assert_close(grads[k], numerical_grad(f, p.data), rtol=1e-6)


def naive_conv(x, w, b, stride, pad):
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - kh) // stride[0] + 1
    ow = (wd + 2 * pad[1] - kw) // stride[1] + 1
    out = np.zeros((n, oc, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride[0] : i * stride[0] + kh, j * stride[1] : j * stride[1] + kw]
            out[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out


def naive_maxpool(x, k, s):
    n, c, h, w = x.shape
    oh, ow = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, i * s[0] : i * s[0] + k[0], j * s[1] : j * s[1] + k[1]].max(axis=(2, 3))
    return out


def naive_avgpool(x, k, s, pad):
    # torch's count_include_pad=True: a window's padded zeros count toward its mean
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    n, c, h, w = xp.shape
    oh, ow = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            window = xp[:, :, i * s[0] : i * s[0] + k[0], j * s[1] : j * s[1] + k[1]]
            out[:, :, i, j] = window.mean(axis=(2, 3))
    return out


def f64(rng, *shape):
    return rng.standard_normal(shape)


@pytest.mark.parametrize("batch", [1, 3])
def test_linear_gradients(batch):
    rng = np.random.default_rng(1)
    with default_dtype(np.float64):
        layer = Linear(5, 4, rng=rng)
    layer.params["bias"].data[:] = rng.standard_normal(4)
    check_layer(layer, f64(rng, batch, 5))


CONV_CASES = [
    # (in, out, k, stride, pad, input H, W, batch)
    (1, 2, (3, 3), (1, 1), (0, 0), 5, 5, 2),
    (2, 3, (3, 2), (2, 1), (1, 2), 7, 6, 2),  # non-square kernel, stride 2, asymmetric pad
    (3, 2, (5, 5), (1, 1), (2, 2), 6, 8, 1),  # seed-like padding, non-square input, batch 1
    (2, 2, (2, 3), (3, 2), (0, 1), 8, 9, 2),  # stride > kernel: ragged coverage
    (2, 2, (3, 2), (1, 1), (0, 1), 6, 7, 2),  # stride 1, non-square kernel: the im2col_rows path
    (1, 2, (3, 3), (1, 1), (1, 0), 4, 18, 2),  # stride 1 with output rows of 16+: plain im2col
]


@pytest.mark.parametrize("cin,cout,k,s,p,h,w,n", CONV_CASES)
def test_conv2d_gradients(cin, cout, k, s, p, h, w, n):
    rng = np.random.default_rng(2)
    with default_dtype(np.float64):
        layer = Conv2d(cin, cout, k_size=k, stride=s, padding=p, rng=rng)
    layer.params["bias"].data[:] = rng.standard_normal(cout)
    check_layer(layer, f64(rng, n, cin, h, w))


@pytest.mark.parametrize("cin,cout,k,s,p,h,w,n", CONV_CASES)
def test_conv2d_matches_naive_loop(cin, cout, k, s, p, h, w, n):
    rng = np.random.default_rng(3)
    with default_dtype(np.float64):
        layer = Conv2d(cin, cout, k_size=k, stride=s, padding=p, rng=rng)
    layer.params["bias"].data[:] = rng.standard_normal(cout)
    x = f64(rng, n, cin, h, w)
    expected = naive_conv(x, layer.params["weight"].data, layer.params["bias"].data, s, p)
    assert_close(layer.forward(x), expected, rtol=1e-12)


@pytest.mark.parametrize("cin,cout,k,s,p,h,w,n", CONV_CASES)
def test_conv2d_takes_its_columns_made_beforehand_with_the_same_bits(cin, cout, k, s, p, h, w, n):
    rng = np.random.default_rng(4)
    layer = Conv2d(cin, cout, k_size=k, stride=s, padding=p, rng=rng)
    layer.params["bias"].data[:] = rng.standard_normal(cout)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    r = rng.standard_normal(layer.forward(x).shape).astype(np.float32)
    results = []
    for given in (x, layer.columns(x)):  # the columns are made before the weights change
        layer.params["weight"].data = layer.params["weight"].data * 1  # new weights, as a worker gets
        out = layer.forward(given)
        dx = layer.backward(r)
        results.append([out, dx, layer.params["weight"].grad.copy(), layer.params["bias"].grad.copy()])
    for a, b in zip(*results):
        assert a.shape == b.shape and a.tobytes() == np.ascontiguousarray(b).tobytes()


def test_conv2d_refuses_columns_made_for_another_layer():
    x = np.zeros((2, 1, 8, 8), np.float32)
    columns = Conv2d(1, 2, k_size=3).columns(x)
    for other in (Conv2d(1, 2, k_size=3, padding=1), Conv2d(1, 4, k_size=5)):
        with pytest.raises(ValueError, match="columns made for another layer"):
            other.forward(columns)


POOL_CASES = [
    # (k, stride, H, W, batch)
    ((2, 2), (2, 2), 4, 6, 2),  # the fast path
    ((2, 2), (2, 2), 5, 7, 1),  # fast path, ragged edge left over
    ((3, 3), (2, 2), 7, 6, 2),  # overlapping
    ((3, 2), (1, 2), 5, 5, 1),  # overlapping rows, non-square window
    ((2, 3), (3, 2), 8, 9, 2),  # stride > window: ragged and gapped
]


@pytest.mark.parametrize("k,s,h,w,n", POOL_CASES)
def test_maxpool_gradients(k, s, h, w, n):
    rng = np.random.default_rng(4)
    check_layer(MaxPool2d(k_size=k, stride=s), f64(rng, n, 2, h, w))


@pytest.mark.parametrize("k,s,h,w,n", POOL_CASES)
def test_maxpool_matches_naive_loop(k, s, h, w, n):
    x = f64(np.random.default_rng(5), n, 3, h, w)
    np.testing.assert_array_equal(MaxPool2d(k, s).forward(x), naive_maxpool(x, k, s))


def test_maxpool_tie_sends_gradient_to_first_max_only():
    pool = MaxPool2d(2, 2)
    x = np.zeros((1, 1, 2, 2))
    pool.forward(x)
    dx = pool.backward(np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(dx, [[[[1, 0], [0, 0]]]])


def test_relu_gradients():
    x = f64(np.random.default_rng(6), 3, 7)
    x[np.abs(x) < 1e-3] = 0.5  # keep clear of the kink, where the derivative is undefined
    check_layer(ReLU(), x)


def test_reshape_flattens_all_but_batch():
    x = f64(np.random.default_rng(7), 2, 3, 4, 5)
    layer = Reshape(-1)
    assert layer.forward(x).shape == (2, 60)
    check_layer(layer, x)


@pytest.mark.parametrize("layer", [Tanh(), Sigmoid(), LeakyReLU(), LeakyReLU(0.3)], ids=repr)
def test_activation_gradients(layer):
    x = f64(np.random.default_rng(10), 3, 7) * 3
    x[np.abs(x) < 1e-3] = 0.5  # keep clear of LeakyReLU's kink
    check_layer(layer, x)


@pytest.mark.parametrize(
    "layer,expected",
    [
        (Tanh(), np.tanh),
        (Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
        (LeakyReLU(), lambda x: np.where(x > 0, x, 0.01 * x)),
        (LeakyReLU(0.2), lambda x: np.maximum(x, 0.2 * x)),
    ],
    ids=repr,
)
def test_activation_values(layer, expected):
    x = f64(np.random.default_rng(11), 4, 5) * 4
    assert_close(layer.forward(x), expected(x), rtol=1e-15)


def test_sigmoid_saturates_without_overflow():
    x = np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]])
    with np.errstate(over="raise", invalid="raise"):  # underflow to 0 is the right answer
        out = Sigmoid().forward(x)
    np.testing.assert_array_equal(out[0, [0, 2, 4]], [0, 0.5, 1])
    assert 0 < out[0, 1] < 1e-21 and out[0, 3] == 1


def test_flatten_is_reshape_minus_one():
    x = f64(np.random.default_rng(12), 2, 3, 4, 5)
    layer = Flatten()
    out = layer.forward(x)
    assert out.shape == (2, 60) and repr(layer) == "Flatten()"
    np.testing.assert_array_equal(out, Reshape(-1).forward(x))
    check_layer(layer, x)


AVG_CASES = [
    # (k, stride, pad, H, W, batch); stride None is the window
    ((2, 2), None, (0, 0), 4, 6, 2),
    ((2, 2), (2, 2), (1, 1), 5, 7, 1),  # ragged edge left over, padded
    ((3, 3), (2, 2), (1, 1), 7, 6, 2),  # overlapping, padded
    ((3, 2), (1, 2), (0, 1), 5, 5, 1),  # overlapping rows, non-square window, one axis padded
    ((2, 3), (3, 2), (1, 0), 8, 9, 2),  # stride > window: ragged and gapped
    ((5, 5), (1, 1), (2, 2), 4, 4, 1),  # stride 1, every pixel in many windows
]


@pytest.mark.parametrize("k,s,p,h,w,n", AVG_CASES)
def test_avgpool_gradients(k, s, p, h, w, n):
    rng = np.random.default_rng(13)
    check_layer(AvgPool2d(k, s, p), f64(rng, n, 2, h, w))


@pytest.mark.parametrize("k,s,p,h,w,n", AVG_CASES)
def test_avgpool_matches_naive_loop(k, s, p, h, w, n):
    x = f64(np.random.default_rng(14), n, 3, h, w)
    assert_close(AvgPool2d(k, s, p).forward(x), naive_avgpool(x, k, s if s else k, p), rtol=1e-14)


def test_avgpool_counts_padding():
    out = AvgPool2d(2, 2, padding=1).forward(np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), 0.25))


def test_dropout_eval_and_p_zero_are_the_identity():
    x, g = f64(np.random.default_rng(15), 4, 6), f64(np.random.default_rng(16), 4, 6)
    layer = Dropout(0.5)
    layer.training = False
    np.testing.assert_array_equal(layer.forward(x), x)
    np.testing.assert_array_equal(layer.backward(g), g)
    layer = Dropout(0.0)
    np.testing.assert_array_equal(layer.forward(x), x)
    np.testing.assert_array_equal(layer.backward(g), g)


@pytest.mark.parametrize("key", [None, (1, 2, 3, 4)])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_drops_about_p_and_scales_the_rest(p, key):
    layer = Dropout(p, rng=np.random.default_rng(17))
    layer.set_noise(key, offset=5)
    x = np.ones((64, 1000), dtype=np.float32)
    out = layer.forward(x)
    kept = out != 0
    assert abs(1 - kept.mean() - p) < 0.01  # 64000 draws: 5 standard deviations
    np.testing.assert_array_equal(out[kept], np.float32(1) / np.float32(1 - p))
    g = np.random.default_rng(18).random(x.shape, dtype=np.float32)
    np.testing.assert_array_equal(layer.backward(g), g * out)  # the same mask and scale


def test_dropout_gradients_with_a_fixed_key():
    layer = Dropout(0.4)
    layer.set_noise((0, 1, 2, 3))  # the same mask on every forward
    check_layer(layer, f64(np.random.default_rng(19), 5, 3, 4))


def test_dropout_mask_does_not_depend_on_the_split():
    x = np.ones((64, 3, 5), dtype=np.float32)
    layer = Dropout(0.5)
    layer.set_noise((7, 1, 9, 2))
    whole = layer.forward(x)
    for a, b in [(0, 1), (0, 16), (5, 6), (16, 48), (31, 64), (63, 64)]:
        layer.set_noise((7, 1, 9, 2), offset=a)
        np.testing.assert_array_equal(layer.forward(x[a:b]), whole[a:b])


def test_dropout_masks_differ_by_every_key_word():
    x = np.ones((8, 50), dtype=np.float32)

    def mask(key):
        layer = Dropout(0.5)
        layer.set_noise(key)
        return layer.forward(x) != 0

    base = mask((1, 2, 3, 4))
    np.testing.assert_array_equal(mask((1, 2, 3, 4)), base)
    for key in [(0, 2, 3, 4), (1, 0, 3, 4), (1, 2, 0, 4), (1, 2, 3, 0)]:
        assert (mask(key) != base).any(), key
    # rows of one batch are not copies of each other
    assert (base[0] != base[1:]).any(axis=1).all()
    # SeedSequence pads with zeros: without Dropout's own last word, key (1, 2, 1, 0) would replay
    # the shift augmentation's stream [seed 1, epoch 2, 1]
    shifts = np.random.PCG64([1, 2, 1]).random_raw(x.size).reshape(x.shape) >= np.uint64(2**63)
    assert (mask((1, 2, 1, 0)) != shifts).any()


def keyed_dropout(p: float) -> Dropout:
    layer = Dropout(p)
    layer.set_noise((0, 0, 0, 0))
    return layer


def test_dropout_without_a_key_draws_from_its_rng():
    x = np.ones((6, 40))
    a, b = Dropout(0.5, rng=np.random.default_rng(20)), Dropout(0.5, rng=np.random.default_rng(20))
    first = a.forward(x)
    np.testing.assert_array_equal(first, b.forward(x))
    assert (a.forward(x) != first).any()  # a fresh mask each forward


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: Conv2d(1, 6, k_size=(5, 5), stride=(1, 1), padding=(2, 2)), (4, 1, 28, 28)),
        (lambda: Linear(784, 10), (4, 784)),
        (lambda: MaxPool2d(k_size=[2, 2], stride=[2, 2]), (4, 6, 28, 28)),
        (lambda: ReLU(), (4, 10)),
        (lambda: AvgPool2d(3, 2, padding=1), (4, 6, 28, 28)),
        (lambda: Tanh(), (4, 10)),
        (lambda: Sigmoid(), (4, 10)),
        (lambda: LeakyReLU(), (4, 10)),
        (lambda: Flatten(), (4, 6, 5, 5)),
        (lambda: Dropout(0.5), (4, 10)),
        (lambda: keyed_dropout(0.3), (4, 6, 5, 5)),
    ],
)
def test_float32_stays_float32(make, shape):
    layer = make()
    x = np.random.default_rng(8).random(shape, dtype=np.float32)
    out = layer.forward(x)
    assert out.dtype == np.float32
    assert layer.backward(np.ones_like(out)).dtype == np.float32
    assert all(p.grad.dtype == np.float32 for p in layer.parameters)


def test_float64_input_is_not_upcast_by_a_float32_layer():
    layer = Linear(3, 2)
    assert layer.forward(np.ones((1, 3))).dtype == np.float32


@pytest.mark.parametrize(
    "bad",
    [
        lambda: Conv2d(1, 2, k_size=3).forward(np.zeros((1, 2, 5, 5))),
        lambda: Conv2d(1, 2, k_size=7).forward(np.zeros((1, 1, 5, 5))),
        lambda: Linear(3, 2).forward(np.zeros((1, 4))),
        lambda: MaxPool2d(3).forward(np.zeros((1, 1, 2, 2))),
        lambda: Conv2d(1, 2, k_size=(1, 2, 3)),
        lambda: AvgPool2d(3).forward(np.zeros((1, 1, 2, 2))),
        lambda: AvgPool2d(3, padding=2),
        lambda: AvgPool2d(2).forward(np.zeros((1, 4, 4))),
        lambda: Dropout(1.0),
        lambda: Dropout(-0.1),
    ],
)
def test_bad_shapes_are_clear_errors(bad):
    with pytest.raises(ValueError):
        bad()


@pytest.mark.parametrize(
    "make",
    [
        lambda: MaxPool2d(2, 2),
        lambda: MaxPool2d(3, 2),
        lambda: ReLU(),
        lambda: Conv2d(3, 2, 3, padding=1),
        lambda: AvgPool2d(2, 2),
        lambda: AvgPool2d(3, 2, padding=1),
    ],
)
def test_memory_layout_does_not_change_results(make):
    # conv outputs are NCHW views of channel-major memory; every layer must read them correctly
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 6, 7))
    x_view = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    a, b = make(), make()
    if a.params:
        for k in a.params:
            b.params[k].data[...] = a.params[k].data
    out_a, out_b = a.forward(x), b.forward(x_view)
    np.testing.assert_array_equal(out_a, out_b)
    g = rng.standard_normal(out_a.shape)
    np.testing.assert_array_equal(a.backward(g), b.backward(g))
