"""im2col / col2im: turn a convolution into one GEMM, looping only over kernel offsets."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def output_size(size: int, k: int, stride: int, pad: int = 0) -> int:
    return (size + 2 * pad - k) // stride + 1


def pad2d(x: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """Zero-pad the last two axes of (N, C, H, W)."""
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    return xp


def windows(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """A strided view (N, C, OH, OW, KH, KW) of every kernel window; nothing is copied."""
    return sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def im2col(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    # (N, C, Hp, Wp) -> (C*KH*KW, N*OH*OW): rows ordered (c, kh, kw) like a conv weight's columns,
    # so the whole batch is one GEMM whose output (OC, N*OH*OW) is already channel-major
    n, c = xp.shape[:2]
    win = windows(xp, kh, kw, sh, sw)
    oh, ow = win.shape[2:4]
    return win.transpose(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, n * oh * ow)


def col2im(dcol: np.ndarray, xp_shape: tuple[int, ...], kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    # (C*KH*KW, N*OH*OW) -> (N, C, Hp, Wp): each window's gradient summed back onto its pixels
    n, c, hp, wp = xp_shape
    oh, ow = output_size(hp, kh, sh), output_size(wp, kw, sw)
    cols = dcol.reshape(c, kh, kw, n, oh, ow)  # a view: each cols[:, i, j] is a contiguous block
    dxp = np.zeros((c, n, hp, wp), dtype=dcol.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw] += cols[:, i, j]
    return dxp.transpose(1, 0, 2, 3)


# Stride 1, the common case, has a faster form. Lay each padded image out flat, with kw-1 spare
# zeros at its end: the pixels a kernel offset (i, j) touches, over all output rows, are then ONE
# contiguous run of OH*Wp values starting at i*Wp + j. Copying runs that long is several times
# faster than copying OW-wide rows. The price is Wp-OW extra "wrapped" columns per output row,
# which the forward pass drops and the backward pass gives a zero gradient, so no value changes.


def im2col_rows(x: np.ndarray, kh: int, kw: int, ph: int, pw: int) -> tuple[np.ndarray, tuple[int, ...]]:
    # (N, C, H, W) -> (C*KH*KW, N*OH*Wp) for stride 1; also returns the padded shape (N, C, Hp, Wp)
    n, c, h, w = x.shape
    hp, wp = h + 2 * ph, w + 2 * pw
    oh = hp - kh + 1
    flat = np.zeros((c, n, hp * wp + kw - 1), dtype=x.dtype)
    flat[:, :, : hp * wp].reshape(c, n, hp, wp)[:, :, ph : ph + h, pw : pw + w] = x.transpose(1, 0, 2, 3)
    col = np.empty((c, kh, kw, n, oh * wp), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            col[:, i, j] = flat[:, :, i * wp + j : i * wp + j + oh * wp]
    return col.reshape(c * kh * kw, n * oh * wp), (n, c, hp, wp)


def col2im_rows(dcol: np.ndarray, xp_shape: tuple[int, ...], kh: int, kw: int) -> np.ndarray:
    # (C*KH*KW, N*OH*Wp) -> (N, C, Hp, Wp), the inverse layout of im2col_rows; the wrapped
    # columns of dcol must be zero (they are when the output gradient is zero there)
    n, c, hp, wp = xp_shape
    oh = hp - kh + 1
    cols = dcol.reshape(c, kh, kw, n, oh * wp)
    flat = np.zeros((c, n, hp * wp + kw - 1), dtype=dcol.dtype)
    for i in range(kh):
        for j in range(kw):
            flat[:, :, i * wp + j : i * wp + j + oh * wp] += cols[:, i, j]
    return flat[:, :, : hp * wp].reshape(c, n, hp, wp).transpose(1, 0, 2, 3)
