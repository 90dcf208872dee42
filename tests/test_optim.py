"""SGD and Adam step by step against their formulas, and exact state export/restore."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_cnn import SGD, Adam, Tensor
from numpy_cnn.buckets import Layout


def make_params(rng, dtype=np.float64):
    return [Tensor(rng.standard_normal(s), dtype) for s in [(3, 4), (4,), (2, 1, 3, 3)]]


def random_grads(params, rng):
    for p in params:
        p.grad[...] = rng.standard_normal(p.shape)


def test_adam_matches_formula_step_by_step():
    rng = np.random.default_rng(0)
    params = make_params(rng)
    lr, b1, b2, eps = 0.01, 0.8, 0.99, 1e-6
    opt = Adam(params, lr=lr, beta1=b1, beta2=b2, eps=eps)
    ref = [p.data.copy() for p in params]
    m = [np.zeros_like(r) for r in ref]
    v = [np.zeros_like(r) for r in ref]
    for t in range(1, 6):
        random_grads(params, rng)
        for i, p in enumerate(params):
            m[i] = b1 * m[i] + (1 - b1) * p.grad
            v[i] = b2 * v[i] + (1 - b2) * p.grad**2
            m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            ref[i] = ref[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
        opt.update()
        for p, r in zip(params, ref):
            np.testing.assert_allclose(p.data, r, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_formula_step_by_step(momentum):
    rng = np.random.default_rng(1)
    params = make_params(rng)
    opt = SGD(params, lr=0.1, momentum=momentum)
    ref = [p.data.copy() for p in params]
    vel = [np.zeros_like(r) for r in ref]
    for _ in range(4):
        random_grads(params, rng)
        for i, p in enumerate(params):
            vel[i] = momentum * vel[i] + p.grad
            ref[i] = ref[i] - 0.1 * vel[i]
        opt.update()
        for p, r in zip(params, ref):
            np.testing.assert_allclose(p.data, r, rtol=1e-13)


@pytest.mark.parametrize("make", [lambda ps: Adam(ps, lr=0.01), lambda ps: SGD(ps, lr=0.1, momentum=0.9)])
def test_state_round_trip_continues_bitwise(make):
    def run(opt, params, rng, steps):
        for _ in range(steps):
            random_grads(params, rng)
            opt.update()

    params = make_params(np.random.default_rng(2), np.float32)
    opt = make(params)
    run(opt, params, np.random.default_rng(3), 3)
    state = opt.state_dict()
    saved = [p.data.copy() for p in params]
    run(opt, params, np.random.default_rng(4), 3)

    fresh = [Tensor(s) for s in saved]
    opt2 = make(fresh)
    opt2.load_state_dict(state)
    assert opt2.t == 3
    run(opt2, fresh, np.random.default_rng(4), 3)
    for a, b in zip(params, fresh):
        np.testing.assert_array_equal(a.data, b.data)


def test_state_dict_is_a_copy():
    params = make_params(np.random.default_rng(5))
    opt = Adam(params)
    random_grads(params, np.random.default_rng(6))
    opt.update()
    state = opt.state_dict()
    m0 = state["m.0"].copy()
    opt.update()
    np.testing.assert_array_equal(state["m.0"], m0)


def test_float32_update_stays_float32_and_in_place():
    params = make_params(np.random.default_rng(7), np.float32)
    ids = [id(p.data) for p in params]
    opt = Adam(params)
    random_grads(params, np.random.default_rng(8))
    opt.update()
    assert [id(p.data) for p in params] == ids
    assert all(p.data.dtype == np.float32 for p in params)
    assert all(b.dtype == np.float32 for bufs in opt.state.values() for b in bufs)


def test_bad_parameter_lists_are_errors():
    p = Tensor(np.zeros(3))
    with pytest.raises(ValueError):
        Adam([])
    with pytest.raises(ValueError):
        Adam([p, p])
    with pytest.raises(TypeError):
        Adam([np.zeros(3)])
    opt = Adam([p])
    with pytest.raises(ValueError):
        opt.load_state_dict({"t": 1})


@pytest.mark.parametrize("make", [lambda ps: Adam(ps, lr=1e-2), lambda ps: SGD(ps, lr=0.1, momentum=0.9)])
def test_a_step_on_flat_buckets_has_the_bits_of_update(make):
    """The parameter server's way (distributed/updates.py): the parameters end to end in a flat
    vector, bucket after bucket, the optimizer's state laid out the same way, and one update_span
    per bucket into the other of two flat buffers."""
    rng = np.random.default_rng(4)
    shapes = [(5, 4), (4,), (3, 5), (3,)]
    layout = Layout(shapes, [[2, 3], [0, 1]])  # the last layer's bucket first
    whole = [Tensor(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    a = make(whole)
    flats = [np.empty(layout.size, np.float32), np.empty(layout.size, np.float32)]
    for view, p in zip(layout.views(flats[0]), whole):
        view[...] = p.data
    b = make([Tensor(p.data.copy()) for p in whole])
    b.flatten(layout)
    side = [0, 0]
    for _ in range(4):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        for p, g in zip(whole, grads):
            p.grad = g
        a.update()
        flat_grad = np.empty(layout.size, np.float32)
        for view, g in zip(layout.views(flat_grad), grads):
            view[...] = g
        b.t += 1
        for bucket in (0, 1):
            span, s = layout.span(bucket), side[bucket]
            old = flats[s][span].copy()
            b.update_span(span, flat_grad[span], flats[s][span], flats[1 - s][span])
            assert flats[s][span].tobytes() == old.tobytes()  # the old values stay
            side[bucket] ^= 1
        for i, p in enumerate(whole):
            bucket = 0 if i >= 2 else 1
            assert layout.views(flats[side[bucket]])[i].tobytes() == p.data.tobytes()
    state = b.state_dict()  # per parameter, as update() keeps it: checkpoints do not change
    for key, value in a.state_dict().items():
        assert state[key].tobytes() == value.tobytes()
