"""Layers: each has forward(x) and backward(grad) -> grad wrt x; learnable ones fill Tensor.grad."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .im2col import col2im, col2im_rows, im2col, im2col_rows, output_size, pad2d
from .init import Initializer, XavierUniform, Zeros
from .tensor import Tensor, get_default_dtype

Size = int | Sequence[int]


def pair(size: Size, name: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair of positive ints."""
    if isinstance(size, int | np.integer):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 0:
        raise ValueError(f"{name} must be an int or a pair of non-negative ints, got {size}")
    return size


class Layer:
    """Base class: `params` maps a name ('weight', 'bias') to its Tensor; `training` is the mode."""

    def __init__(self) -> None:
        self.params: dict[str, Tensor] = {}
        self.training = True

    @property
    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Fill the parameters' .grad; return the gradient wrt the input (None if not input_grad)."""
        raise NotImplementedError

    def set_noise(self, key: tuple[int, ...] | None, offset: int = 0) -> None:
        """Take the next forwards' noise from stream `key` at row `offset` (None: the layer's own rng)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Linear(Layer):
    """y = x @ weight + bias, with weight (in, out) and bias (out,)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        w_init: Initializer | None = None,
        b_init: Initializer | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        dtype = get_default_dtype()
        self.in_features, self.out_features = in_features, out_features
        shape = (in_features, out_features)
        self.params["weight"] = Tensor((w_init or XavierUniform())(shape, rng, dtype), dtype)
        self.params["bias"] = Tensor((b_init or Zeros())((out_features,), rng, dtype), dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        # (N, in) -> (N, out)
        w, b = self.params["weight"], self.params["bias"]
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self!r} expects input (N, {self.in_features}), got {x.shape}")
        self._x = x = x.astype(w.dtype, copy=False)
        out = x @ w.data
        out += b.data
        return out

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        w, b = self.params["weight"], self.params["bias"]
        np.matmul(self._x.T, grad, out=w.grad)
        np.sum(grad, axis=0, out=b.grad)
        return grad @ w.data.T if input_grad else None

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features})"


class Conv2d(Layer):
    """2-D convolution over NCHW input via im2col, weight (out, in, kh, kw), bias (out,)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        k_size: Size,
        stride: Size = 1,
        padding: Size = 0,
        w_init: Initializer | None = None,
        b_init: Initializer | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        dtype = get_default_dtype()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.k_size, self.stride = pair(k_size, "k_size"), pair(stride, "stride")
        self.padding = pair(padding, "padding")
        if min(self.k_size) < 1 or min(self.stride) < 1:
            raise ValueError(f"k_size and stride must be >= 1, got {self.k_size}, {self.stride}")
        shape = (out_channels, in_channels, *self.k_size)
        self.params["weight"] = Tensor((w_init or XavierUniform())(shape, rng, dtype), dtype)
        self.params["bias"] = Tensor((b_init or Zeros())((out_channels,), rng, dtype), dtype)

    def columns(self, x: np.ndarray) -> Columns:
        """Input (N, C, H, W) laid out as this layer's GEMM reads it: the half of the forward pass
        that does not read the weights, so it can be done before they are known."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self!r} expects input (N, {self.in_channels}, H, W), got {x.shape}")
        (kh, kw), (sh, sw), (ph, pw) = self.k_size, self.stride, self.padding
        h, wd = x.shape[2:]
        oh, ow = output_size(h, kh, sh, ph), output_size(wd, kw, sw, pw)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self!r}: input {h}x{wd} is smaller than the kernel")
        x = x.astype(self.params["weight"].dtype, copy=False)
        # im2col_rows pays off where output rows are short (measured: conv-net's second conv,
        # OW 10, gains 0.3 ms a step; its first, OW 28, loses 0.2 ms to the wrapped columns)
        if (sh, sw) == (1, 1) and ow < 16:
            col, xp_shape = im2col_rows(x, kh, kw, ph, pw)  # (C*KH*KW, N*OH*Wp)
            return Columns(self._geometry(), x.shape, xp_shape, (oh, ow), True, col)
        xp = pad2d(x, ph, pw)
        return Columns(self._geometry(), x.shape, xp.shape, (oh, ow), False, im2col(xp, kh, kw, sh, sw))

    def _geometry(self) -> tuple:
        return (self.in_channels, self.k_size, self.stride, self.padding, self.params["weight"].dtype)

    def forward(self, x: np.ndarray | Columns) -> np.ndarray:
        # (N, C, H, W), or its columns made beforehand -> (N, OC, OH, OW)
        w, b = self.params["weight"], self.params["bias"]
        if not isinstance(x, Columns):
            x = self.columns(x)
        elif x.geometry != self._geometry():
            raise ValueError(f"{self!r} got columns made for another layer: {x.geometry}")
        self._x_shape, self._xp_shape, self._rows, self._col = x.x_shape, x.xp_shape, x.rows, x.col
        n, (oh, ow) = x.x_shape[0], x.out
        width = self._xp_shape[3] if self._rows else ow
        out = w.data.reshape(self.out_channels, -1) @ self._col  # (OC, N*OH*width)
        out += b.data[:, None]
        # an NCHW view of channel-major memory (wrapped columns dropped): the next layer reads it
        # through strides, and the backward GEMMs get their gradient in this layout
        return out.reshape(self.out_channels, n, oh, width)[..., :ow].transpose(1, 0, 2, 3)

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        w, b = self.params["weight"], self.params["bias"]
        (kh, kw), (sh, sw), (ph, pw) = self.k_size, self.stride, self.padding
        g = grad.transpose(1, 0, 2, 3)  # (OC, N, OH, OW)
        if self._rows:  # zero gradient for the wrapped columns: they then change nothing
            wide = np.empty((*g.shape[:3], self._xp_shape[3]), dtype=g.dtype)
            wide[..., : g.shape[3]] = g
            wide[..., g.shape[3] :] = 0
            g = wide
        g = g.reshape(self.out_channels, -1)  # (OC, N*OH*width)
        # col @ g.T runs about twice as fast in OpenBLAS as g @ col.T for this long, thin product
        w.grad.reshape(self.out_channels, -1)[...] = (self._col @ g.T).T
        np.sum(g, axis=1, out=b.grad)
        if not input_grad:
            return None
        dcol = w.data.reshape(self.out_channels, -1).T @ g  # (C*KH*KW, N*OH*width)
        if self._rows:
            dxp = col2im_rows(dcol, self._xp_shape, kh, kw)
        else:
            dxp = col2im(dcol, self._xp_shape, kh, kw, sh, sw)
        h, wd = self._x_shape[2:]
        return dxp[:, :, ph : ph + h, pw : pw + wd]

    def __repr__(self) -> str:
        return (
            f"Conv2d({self.in_channels}, {self.out_channels}, k_size={self.k_size}, "
            f"stride={self.stride}, padding={self.padding})"
        )


@dataclass(frozen=True)
class Columns:
    """A Conv2d input already laid out for the layer's GEMM (Conv2d.columns), which its forward pass
    takes in place of the input: a worker makes the next batch's while it waits for parameters."""

    geometry: tuple  # the channels, kernel, stride, padding and dtype of the layer it is for
    x_shape: tuple[int, ...]  # the input's (N, C, H, W)
    xp_shape: tuple[int, ...]  # the padded input's
    out: tuple[int, int]  # (OH, OW)
    rows: bool  # laid out by im2col_rows (stride 1, short output rows), else by im2col
    col: np.ndarray

    def __len__(self) -> int:
        return self.x_shape[0]


def window_offsets(x: np.ndarray, k_size: tuple[int, int], stride: tuple[int, int]):
    """(window position k, strided view of every window's element k), k in row-major order."""
    (kh, kw), (sh, sw) = k_size, stride
    oh, ow = output_size(x.shape[2], kh, sh), output_size(x.shape[3], kw, sw)
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, x[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw]


class MaxPool2d(Layer):
    """Max over each window of NCHW input; the gradient goes to the first maximum of a window."""

    def __init__(self, k_size: Size, stride: Size | None = None) -> None:
        super().__init__()
        self.k_size = pair(k_size, "k_size")
        self.stride = pair(stride if stride is not None else k_size, "stride")
        if min(self.k_size) < 1 or min(self.stride) < 1:
            raise ValueError(f"k_size and stride must be >= 1, got {self.k_size}, {self.stride}")

    def forward(self, x: np.ndarray) -> np.ndarray:
        # (N, C, H, W) -> (N, C, OH, OW); rows/columns no window reaches are ignored
        if x.ndim != 4:
            raise ValueError(f"{self!r} expects input (N, C, H, W), got {x.shape}")
        if x.shape[2] < self.k_size[0] or x.shape[3] < self.k_size[1]:
            raise ValueError(f"{self!r}: input {x.shape[2:]} is smaller than the window")
        # work with N and C in memory order (a conv's output is channel-major): numpy's loops then
        # see nearly contiguous arrays, which is several times faster than iterating a transpose
        self._swap = x.strides[1] > x.strides[0]
        x = _swap_nc(x, self._swap)
        # loop over the KH*KW window offsets, never over pixels; strict > keeps the first maximum
        offsets = window_offsets(x, self.k_size, self.stride)
        _, first = next(offsets)
        out = first.copy()
        index_type = np.min_scalar_type(self.k_size[0] * self.k_size[1] - 1)
        arg = np.zeros(out.shape, dtype=index_type)
        for k, view in offsets:
            better = np.greater(view, out)
            np.maximum(out, view, out=out)
            # k grows, so max(arg, k * better) sets k exactly where better; arithmetic beats a
            # masked write, which stalls on the unpredictable mask
            np.maximum(arg, better.view(np.uint8) * index_type.type(k), out=arg, casting="unsafe")
        self._x_shape, self._x_dtype, self._arg = x.shape, x.dtype, arg
        return _swap_nc(out, self._swap)

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        if not input_grad:
            return None
        grad = _swap_nc(grad, self._swap)
        dx = np.zeros(self._x_shape, dtype=np.result_type(grad.dtype, self._x_dtype))
        # windows that do not overlap write disjoint pixels, so plain assignment is enough
        overlap = any(k > s for k, s in zip(self.k_size, self.stride))
        for k, view in window_offsets(dx, self.k_size, self.stride):
            hit = self._arg == k
            if overlap:
                view += np.where(hit, grad, 0)
            else:
                np.multiply(grad, hit, out=view)
        return _swap_nc(dx, self._swap)

    def __repr__(self) -> str:
        return f"MaxPool2d(k_size={self.k_size}, stride={self.stride})"


def _swap_nc(x: np.ndarray, swap: bool) -> np.ndarray:
    """(N, C, H, W) <-> (C, N, H, W) as a view when `swap`, else x itself."""
    return x.transpose(1, 0, 2, 3) if swap else x


class AvgPool2d(Layer):
    """Mean over each window of zero-padded NCHW input; padded zeros count (torch's count_include_pad)."""

    def __init__(self, k_size: Size, stride: Size | None = None, padding: Size = 0) -> None:
        super().__init__()
        self.k_size = pair(k_size, "k_size")
        self.stride = pair(stride if stride is not None else k_size, "stride")
        self.padding = pair(padding, "padding")
        if min(self.k_size) < 1 or min(self.stride) < 1:
            raise ValueError(f"k_size and stride must be >= 1, got {self.k_size}, {self.stride}")
        if any(2 * p > k for p, k in zip(self.padding, self.k_size)):  # as torch: no all-padding windows
            raise ValueError(f"padding {self.padding} is more than half of the window {self.k_size}")

    def forward(self, x: np.ndarray) -> np.ndarray:
        # (N, C, H, W) -> (N, C, OH, OW); rows/columns no window reaches are ignored
        if x.ndim != 4:
            raise ValueError(f"{self!r} expects input (N, C, H, W), got {x.shape}")
        (kh, kw), (sh, sw), (ph, pw) = self.k_size, self.stride, self.padding
        if output_size(x.shape[2], kh, sh, ph) < 1 or output_size(x.shape[3], kw, sw, pw) < 1:
            raise ValueError(f"{self!r}: input {x.shape[2:]} is smaller than the window")
        self._swap = x.strides[1] > x.strides[0]  # N and C in memory order, as in MaxPool2d
        xp = pad2d(_swap_nc(x, self._swap), ph, pw)
        self._x_shape, self._xp_shape, self._x_dtype = x.shape, xp.shape, x.dtype
        # loop over the KH*KW window offsets, never over pixels, summing in row-major window order
        offsets = window_offsets(xp, self.k_size, self.stride)
        _, first = next(offsets)
        out = first.copy()
        for _, view in offsets:
            out += view
        # divide, not multiply by 1/(KH*KW): the rounding of torch's avg_pool2d
        out /= kh * kw
        return _swap_nc(out, self._swap)

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        if not input_grad:
            return None
        (kh, kw), (ph, pw) = self.k_size, self.padding
        g = _swap_nc(grad, self._swap) / (kh * kw)  # a new array: `grad` is left as it was
        dxp = np.zeros(self._xp_shape, dtype=np.result_type(g.dtype, self._x_dtype))
        # overlapping windows share pixels, so each kernel offset adds its share
        for _, view in window_offsets(dxp, self.k_size, self.stride):
            view += g
        h, w = self._x_shape[2:]
        return _swap_nc(dxp[:, :, ph : ph + h, pw : pw + w], self._swap)

    def __repr__(self) -> str:
        return f"AvgPool2d(k_size={self.k_size}, stride={self.stride}, padding={self.padding})"


class ReLU(Layer):
    """max(x, 0); the gradient passes where x > 0."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._mask = x > 0
        return np.maximum(x, 0)

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        return grad * self._mask if input_grad else None


class LeakyReLU(Layer):
    """x where x > 0, else negative_slope * x; the gradient is scaled the same way."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._mask = x > 0
        return np.where(self._mask, x, x * self.negative_slope)

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        return np.where(self._mask, grad, grad * self.negative_slope) if input_grad else None

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope})"


class Tanh(Layer):
    """tanh(x); the gradient is scaled by 1 - tanh(x)^2, from the saved output."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._out = np.tanh(x)
        return self._out

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        return grad * (1 - self._out * self._out) if input_grad else None


class Sigmoid(Layer):
    """1 / (1 + exp(-x)); the gradient is scaled by s * (1 - s), from the saved output s."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        # exp(-|x|) never overflows: for x < 0, 1 / (1 + exp(-x)) is rewritten as e / (1 + e)
        e = np.exp(-np.abs(x))
        self._out = np.where(x >= 0, 1, e) / (1 + e)
        return self._out

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        return grad * (1 - self._out) * self._out if input_grad else None


class Reshape(Layer):
    """Reshape all but the batch axis; Reshape(-1) flattens (N, ...) to (N, -1)."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        if not shape:
            raise ValueError("Reshape needs a target shape, e.g. Reshape(-1)")
        self.shape = shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x_shape = x.shape
        return x.reshape(x.shape[0], *self.shape)

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        return grad.reshape(self._x_shape) if input_grad else None

    def __repr__(self) -> str:
        return f"Reshape({', '.join(map(str, self.shape))})"


class Flatten(Reshape):
    """(N, ...) -> (N, prod(...)), the same as Reshape(-1)."""

    __repr__ = Layer.__repr__  # "Flatten()", not Reshape's "Reshape(-1)"

    def __init__(self) -> None:
        super().__init__(-1)


# SeedSequence pads entropy with zeros ([s, e, 1] and [s, e, 1, 0] seed one stream): a non-zero last
# word keeps Dropout's streams apart from shorter keys, e.g. the batches' [seed, epoch] and [seed, epoch, 1]
_DROPOUT_STREAM = 0x64726F70  # b"drop"


class Dropout(Layer):
    """While training, zeroes each unit with probability p and scales the rest by 1 / (1 - p)."""

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout's p must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.set_noise(None)

    def set_noise(self, key: tuple[int, ...] | None, offset: int = 0) -> None:
        self._key, self._offset = key, offset

    def _keep(self, shape: tuple[int, ...]) -> np.ndarray:
        if self._key is None:
            return self.rng.random(shape) >= self.p
        features = int(np.prod(shape[1:]))
        bits = np.random.PCG64([*self._key, _DROPOUT_STREAM])
        # the keyed batch's mask is this one stream, `features` words a row: jumping over the rows
        # before `offset` (O(log n) in PCG64) gives every shard exactly its rows of that mask
        bits.advance(self._offset * features)
        # raw words against an integer threshold: P(keep) is exactly 1 - p, and the mask depends on
        # the bit generator alone, not on how a numpy version makes floats of them
        return bits.random_raw(shape[0] * features).reshape(shape) >= np.uint64(self.p * 2**64)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not self.training or self.p == 0:
            self._scale = None
            return x
        # inverted dropout, as torch: the kept units are scaled now, so evaluation is the identity
        self._scale = self._keep(x.shape) * (x.dtype.type(1) / x.dtype.type(1 - self.p))
        return x * self._scale

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        if not input_grad:
            return None
        return grad if self._scale is None else grad * self._scale

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"
