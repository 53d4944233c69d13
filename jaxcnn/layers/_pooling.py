"""Pooling with torch's output sizes: floor or ceil mode, implicit padding, adaptive bins."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._base import Layer, ShapeError, pair


def pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Torch's pooled length of one spatial axis (``pooling_output_shape`` in ATen)."""
    span = size + 2 * padding - kernel
    if ceil_mode:
        out = -(-span // stride) + 1
        # The last window must start inside the input or the left padding.
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    return out


Pads = tuple[tuple[int, int], tuple[int, int]]


def _window_taps(xp: jax.Array, k: tuple[int, int], s: tuple[int, int],
                 outs: tuple[int, int]) -> list[jax.Array]:
    """The ``k[0] * k[1]`` strided views ``(N, oh, ow, C)`` of a padded input, in torch's scan
    order (window row, then column): tap ``i * k[1] + j`` is element ``(i, j)`` of every
    window."""
    n, _, _, c = xp.shape
    return [
        lax.slice(xp, (0, i, j, 0), (n, i + (outs[0] - 1) * s[0] + 1,
                                      j + (outs[1] - 1) * s[1] + 1, c), (1, *s, 1))
        for i in range(k[0]) for j in range(k[1])
    ]


def materialize(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    """The arrays themselves, each computed once.

    XLA's CPU fusion would otherwise inline their producers (the window index; the incoming
    gradient, e.g. a convolution's col2im sum) into every element that reads them: ``kh * kw``
    times per value. A conditional is a fusion boundary: its predicate is always true, but only
    known at run time, and its other branch (zeros, never taken) differs, so XLA keeps it.
    Other backends get the arrays unchanged.
    """
    def barrier(*vs: jax.Array) -> tuple[jax.Array, ...]:
        p = vs[0].reshape(-1)[0].astype(jnp.float32)
        return lax.cond(jnp.isnan(p) | (p == p), lambda *u: u,
                        lambda *u: tuple(jnp.zeros_like(a) for a in u), *vs)

    def identity(*vs: jax.Array) -> tuple[jax.Array, ...]:
        return vs

    return tuple(lax.platform_dependent(*arrays, cpu=barrier, default=identity))


def _first_max_index(xp: jax.Array, y: jax.Array, k: tuple[int, int], s: tuple[int, int]
                     ) -> jax.Array:
    """The tap of each window that torch's max pooling picks (int32 ``(N, oh, ow, C)``).

    ATen scans a window row by row and takes a value when ``val > max || isnan(val)``: the
    first maximum wins a tie, the last NaN wins over everything.
    """
    taps = _window_taps(xp, k, s, y.shape[1:3])
    idx = jnp.zeros(y.shape, jnp.int32)
    for t in reversed(range(len(taps))):
        idx = jnp.where(taps[t] == y, t, idx)
    for t in range(1, len(taps)):
        idx = jnp.where(jnp.isnan(taps[t]), t, idx)
    return idx


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool_nhwc(x: jax.Array, kernel: tuple[int, int], stride: tuple[int, int],
                  pads: Pads) -> jax.Array:
    """Max pooling of NHWC ``x`` (``pads``: ``((top, bottom), (left, right))``, -inf), with
    torch's gradient: each window's gradient goes to the element torch picks (see
    :func:`_first_max_index`), also on ties.

    The forward pass is the maximum of the window's strided views and the backward pass writes
    each view's share directly: both are plain elementwise loops for XLA, where
    ``reduce_window`` and its ``select_and_scatter`` gradient are slow on CPU.
    """
    return _max_pool_fwd(x, kernel, stride, pads)[0]


def _pad_input(x: jax.Array, pads: Pads) -> jax.Array:
    if not any(lo or hi for lo, hi in pads):
        return x
    return lax.pad(x, np.array(-np.inf, x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0),
                                                    (0, 0, 0)))


def _max_pool_fwd(x: jax.Array, kernel: tuple[int, int], stride: tuple[int, int],
                  pads: Pads) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    xp = _pad_input(x, pads)
    outs = tuple((xp.shape[1 + a] - kernel[a]) // stride[a] + 1 for a in range(2))
    taps = _window_taps(xp, kernel, stride, outs)
    y = taps[0]
    for t in taps[1:]:
        y = lax.max(y, t)  # propagates NaN, as torch
    return y, (x, y)


def _max_pool_bwd(kernel: tuple[int, int], stride: tuple[int, int], pads: Pads,
                  res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
    x, y = res
    xp = _pad_input(x, pads)
    (kh, kw), (sh, sw) = kernel, stride
    n, hp, wp, c = xp.shape
    oh, ow = y.shape[1:3]
    g, idx = materialize(g, _first_max_index(xp, y, kernel, stride))
    # The gradient of each window element, (N, oh, kh, ow, kw, C): non-zero at the chosen tap.
    tap = np.arange(kh * kw, dtype=np.int32).reshape(1, 1, kh, 1, kw, 1)
    zero = np.array(0, g.dtype)
    share = jnp.where(idx[:, :, None, :, None, :] == tap, g[:, :, None, :, None, :], zero)
    if kernel == stride:  # disjoint windows tile the top-left of the input
        dxp = share.reshape(n, oh * kh, ow * kw, c)
        dxp = lax.pad(dxp, zero, ((0, 0, 0), (0, hp - oh * kh, 0), (0, wp - ow * kw, 0),
                                  (0, 0, 0)))
    else:
        dxp = jnp.zeros(xp.shape, g.dtype)
        for i in range(kh):
            for j in range(kw):
                dxp = dxp + lax.pad(share[:, :, i, :, j, :], zero, (
                    (0, 0, 0), (i, hp - i - (oh - 1) * sh - 1, sh - 1),
                    (j, wp - j - (ow - 1) * sw - 1, sw - 1), (0, 0, 0)))
    (top, _), (left, _) = pads
    return (dxp[:, top:top + x.shape[1], left:left + x.shape[2], :],)


max_pool_nhwc.defvjp(_max_pool_fwd, _max_pool_bwd)


class _Pool2d(Layer):
    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None
    padding: int | tuple[int, int] = 0
    ceil_mode: bool = False

    def _geometry(self, x: jax.Array) -> tuple[list[int], list[int], list[int], list[int]]:
        self.check_ndim(x, (4,), "NHWC")
        k = pair(self.kernel_size)
        s = pair(self.stride) if self.stride is not None else k
        p = pair(self.padding)
        for ki, pi in zip(k, p, strict=True):
            if pi > ki // 2:
                raise ValueError(
                    f"{self.where()}: padding {p} must be at most half the kernel size {k} "
                    "(torch refuses it too)"
                )
        outs = []
        for size, ki, si, pi in zip(x.shape[1:3], k, s, p, strict=True):
            o = pool_output_size(size, ki, si, pi, self.ceil_mode)
            if o < 1:
                raise ShapeError(
                    f"{self.where()}: input of spatial size {tuple(x.shape[1:3])} is too small "
                    f"for kernel {k}, stride {s}, padding {p} (shape {tuple(x.shape)}, NHWC)"
                )
            outs.append(o)
        return list(k), list(s), list(p), outs

    @staticmethod
    def _pads(size: int, k: int, s: int, p: int, out: int) -> tuple[int, int]:
        # Right padding so that exactly `out` windows fit (ceil mode may need more than p).
        hi = max((out - 1) * s + k - size - p, 0)
        return (p, hi)

    def extra_repr(self) -> str:
        k = self.kernel_size
        s = self.stride if self.stride is not None else k
        return f"kernel_size={k}, stride={s}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """``torch.nn.MaxPool2d`` on NHWC input (padding is -inf, floor or ceil mode)."""

    def extra_repr(self) -> str:
        return super().extra_repr() + f", dilation=1, ceil_mode={self.ceil_mode}"

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        k, s, p, outs = self._geometry(x)
        pads = [self._pads(x.shape[1 + i], k[i], s[i], p[i], outs[i]) for i in range(2)]
        return max_pool_nhwc(x, tuple(k), tuple(s), tuple(pads))


class AvgPool2d(_Pool2d):
    """``torch.nn.AvgPool2d`` on NHWC input, with torch's divisor in every mode.

    The divisor of a window counts the padding when ``count_include_pad`` (never the extra
    right-hand region that ``ceil_mode`` adds), as ATen does; ``divisor_override`` replaces it.
    """

    count_include_pad: bool = True
    divisor_override: int | None = None

    def extra_repr(self) -> str:
        return super().extra_repr()

    def _divisor(self, size: int, k: int, s: int, p: int, out: int) -> np.ndarray:
        start = np.arange(out) * s - p
        end = np.minimum(start + k, size + p)
        full = end - start
        clipped = np.minimum(end, size) - np.maximum(start, 0)
        return (full if self.count_include_pad else clipped).astype(np.float64)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        k, s, p, outs = self._geometry(x)
        pads = [self._pads(x.shape[1 + i], k[i], s[i], p[i], outs[i]) for i in range(2)]
        total = lax.reduce_window(
            x, np.array(0, x.dtype), lax.add, (1, *k, 1), (1, *s, 1), ((0, 0), *pads, (0, 0))
        )
        if self.divisor_override is not None:
            return total / jnp.asarray(self.divisor_override, x.dtype)
        dh = self._divisor(x.shape[1], k[0], s[0], p[0], outs[0])
        dw = self._divisor(x.shape[2], k[1], s[1], p[1], outs[1])
        return total / jnp.asarray(np.outer(dh, dw)[None, :, :, None], x.dtype)


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """Torch's adaptive-pool bins ``[floor(i * size / out), ceil((i + 1) * size / out))``."""
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


class AdaptiveAvgPool2d(Layer):
    """``torch.nn.AdaptiveAvgPool2d``: ``(N, H, W, C) -> (N, oh, ow, C)`` with torch's bins."""

    output_size: int | tuple[int, int]

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_ndim(x, (4,), "NHWC")
        oh, ow = pair(self.output_size)
        h, w = x.shape[1:3]
        if h % oh == 0 and w % ow == 0:  # equal bins: one reshape-mean
            n, _, _, c = x.shape
            return x.reshape(n, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))
        rows = [x[:, a:b].mean(axis=1, keepdims=True) for a, b in adaptive_bins(h, oh)]
        xh = jnp.concatenate(rows, axis=1)
        cols = [xh[:, :, a:b].mean(axis=2, keepdims=True) for a, b in adaptive_bins(w, ow)]
        return jnp.concatenate(cols, axis=2)


class GlobalAvgPool2d(Layer):
    """The book's ``GlobalAvgPool2d``: mean over the whole map, ``(N, H, W, C) -> (N, 1, 1, C)``."""

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_ndim(x, (4,), "NHWC")
        return jnp.mean(x, axis=(1, 2), keepdims=True)


__all__ = [
    "AdaptiveAvgPool2d", "AvgPool2d", "GlobalAvgPool2d", "MaxPool2d", "ShapeError",
    "adaptive_bins", "materialize", "max_pool_nhwc", "pool_output_size",
]
