"""Optimizers: one base class; each rule is a short in-place `_step` per parameter."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .tensor import Tensor


class Optimizer:
    """The parameters, the step count `t`, and per-parameter state buffers."""

    state_names: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        if not all(isinstance(p, Tensor) for p in self.params):
            raise TypeError("optimizer parameters must be Tensors (pass net.parameters)")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("optimizer got the same Tensor twice")
        self.lr = lr
        self.t = 0
        self.state = {name: [np.zeros_like(p.data) for p in self.params] for name in self.state_names}
        # one scratch buffer per parameter, so a step allocates nothing
        self._buf = [np.empty_like(p.data) for p in self.params]

    def update(self) -> None:
        self.t += 1
        for i, p in enumerate(self.params):
            self._step(i, p, p.data)

    def flatten(self, layout) -> None:
        """Keep every state buffer and the scratch in one flat vector laid out by `layout`
        (numpy_cnn.buckets.Layout), each parameter's buffer a view of it, so that `update_span`
        can update several parameters lying end to end with one pass of each operation."""
        dtypes = {p.data.dtype for p in self.params}
        if len(dtypes) != 1 or layout.shapes != [p.shape for p in self.params]:
            raise ValueError("a flat layout needs parameters of one dtype, in the layout's shapes")
        (dtype,) = dtypes
        self.flat_state = {}
        for name, bufs in self.state.items():
            flat = self.flat_state[name] = np.empty(layout.size, dtype)
            views = layout.views(flat)
            for view, buf in zip(views, bufs):
                view[...] = buf
            self.state[name] = views
        self._flat_buf = np.empty(layout.size, dtype)
        self._buf = layout.views(self._flat_buf)

    def update_span(self, span: slice, grad: np.ndarray, data: np.ndarray, out: np.ndarray) -> None:
        """Part of a step, after `t` was counted once for the whole step (`t += 1`): the
        parameters that `span` of the flat layout holds (after `flatten`), `data` their values end
        to end, `grad` their gradient; the new values go into `out`, the old ones stay. Every rule
        is elementwise and `new = old - d` rounds as `old -= d`, so a step done span by span has
        the bits of `update()`: a parameter server updates each bucket as soon as its gradient is
        in, and keeps the old values for workers that take over a lost worker's share."""
        state = [self.flat_state[name][span] for name in self.state_names]
        self._rule(grad, data, out, *state, self._flat_buf[span])

    def _step(self, i: int, p: Tensor, out: np.ndarray) -> None:
        """Update parameter i from p.grad; write its new value into `out` (p.data: in place)."""
        self._rule(p.grad, p.data, out, *(self.state[name][i] for name in self.state_names), self._buf[i])

    def _rule(self, g: np.ndarray, x: np.ndarray, out: np.ndarray, *state_and_buf: np.ndarray) -> None:
        """The update of values x with gradient g into `out`, given the rule's state buffers (in
        state_names order) and a scratch buffer, all of x's shape."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to continue bit for bit: t and copies of the state buffers."""
        out = {"t": np.array(self.t, dtype=np.int64)}
        for name, bufs in self.state.items():
            out.update({f"{name}.{i}": b.copy() for i, b in enumerate(bufs)})
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        expected = {"t"} | {f"{n}.{i}" for n in self.state for i in range(len(self.params))}
        if set(state) != expected:
            raise ValueError(f"optimizer state keys {sorted(state)} do not match {sorted(expected)}")
        for name, bufs in self.state.items():
            for i, b in enumerate(bufs):
                src = np.asarray(state[f"{name}.{i}"])
                if src.shape != b.shape:
                    raise ValueError(f"optimizer state {name}.{i} has shape {src.shape}, expected {b.shape}")
                b[...] = src
        self.t = int(state["t"])


class SGD(Optimizer):
    """p -= lr * v, with v = momentum * v + g (v = g when momentum is 0)."""

    state_names = ("velocity",)

    def __init__(self, params: Iterable[Tensor], lr: float = 0.01, momentum: float = 0.0) -> None:
        super().__init__(params, lr)
        self.momentum = momentum

    def _rule(self, g: np.ndarray, x: np.ndarray, out: np.ndarray, v: np.ndarray, buf: np.ndarray) -> None:
        if self.momentum:
            v *= self.momentum
            v += g
        else:
            v = g
        np.multiply(v, self.lr, out=buf)
        np.subtract(x, buf, out=out)


class Adam(Optimizer):
    """Kingma & Ba (2015) with bias correction, as torch.optim.Adam defines it.

    The arithmetic is m = b1*m + (1-b1)*g and v = b2*v + (1-b2)*g*g, then
    p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). torch computes m with lerp_, which
    rounds differently, so the two agree to float32 rounding (the tests use rtol 2e-6), not bitwise.
    """

    state_names = ("m", "v")

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, lr)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def _rule(
        self, g: np.ndarray, x: np.ndarray, out: np.ndarray, m: np.ndarray, v: np.ndarray, buf: np.ndarray
    ) -> None:
        b1, b2 = self.beta1, self.beta2
        m *= b1
        m += np.multiply(g, 1 - b1, out=buf)
        v *= b2
        np.multiply(g, g, out=buf)
        buf *= 1 - b2
        v += buf
        # p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        np.sqrt(v, out=buf)
        buf /= math.sqrt(1 - b2**self.t)
        buf += self.eps
        np.divide(m, buf, out=buf)
        buf *= self.lr / (1 - b1**self.t)
        np.subtract(x, buf, out=out)
