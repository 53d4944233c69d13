"""2-D max and average pooling of NHWC inputs with explicit per-side padding.

``pads`` is ``((top, bottom), (left, right))``; max pooling pads with ``-inf``, average pooling
with zeros. Max pooling's gradient is torch's: each window's gradient goes to the element
ATen picks, which scans a window row by row and takes a value when ``val > max ||
isnan(val)`` (the first maximum wins a tie, the last NaN wins over everything).

:func:`max_pool2d_xla` is the definition (``lax.reduce_window``; its gradient gathers the
windows, picks torch's element and scatter-adds); :func:`max_pool2d_cpu` computes the same
numbers with strided views, plain elementwise loops for XLA's CPU backend, where
``reduce_window`` and its ``select_and_scatter`` gradient are slow. :func:`max_pool2d` picks
one (:func:`~jaxcnn.ops.select.fast_cpu_kernels`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .barrier import materialize
from .select import fast_cpu_kernels

Pair = tuple[int, int]
Pads = tuple[tuple[int, int], tuple[int, int]]


def max_pool2d(x: jax.Array, kernel: Pair, stride: Pair, pads: Pads) -> jax.Array:
    """Max pooling of ``x`` ``(N, H, W, C)``: ``(N, oh, ow, C)`` with ``oh = (H + top + bottom
    - kh) // sh + 1``; NaN propagates, as in torch. :func:`max_pool2d_cpu` when the fast CPU
    kernels are selected, else :func:`max_pool2d_xla`."""
    if fast_cpu_kernels():
        return max_pool2d_cpu(x, kernel, stride, pads)
    return max_pool2d_xla(x, kernel, stride, pads)


def avg_pool2d(x: jax.Array, kernel: Pair, stride: Pair, pads: Pads,
               divisor: np.ndarray | float) -> jax.Array:
    """Each window's sum (zero padding) divided by ``divisor``: a number, or an array that
    broadcasts against the output ``(N, oh, ow, C)`` (e.g. ``(1, oh, ow, 1)``, torch's
    per-window divisor)."""
    total = lax.reduce_window(
        x, np.array(0, x.dtype), lax.add, (1, *kernel, 1), (1, *stride, 1),
        ((0, 0), *pads, (0, 0)),
    )
    return total / jnp.asarray(divisor, x.dtype)


def _pad_input(x: jax.Array, pads: Pads) -> jax.Array:
    if not any(lo or hi for lo, hi in pads):
        return x
    return lax.pad(x, np.array(-np.inf, x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0),
                                                    (0, 0, 0)))


def _out_sizes(padded: tuple[int, ...], kernel: Pair, stride: Pair) -> Pair:
    return tuple((padded[1 + a] - kernel[a]) // stride[a] + 1 for a in range(2))


def _crop(dxp: jax.Array, x_shape: tuple[int, ...], pads: Pads) -> jax.Array:
    (top, _), (left, _) = pads
    return dxp[:, top:top + x_shape[1], left:left + x_shape[2], :]


# --- the definition -------------------------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool2d_xla(x: jax.Array, kernel: Pair, stride: Pair, pads: Pads) -> jax.Array:
    """The definition: ``lax.reduce_window`` with ``lax.max`` (which propagates NaN) over the
    ``-inf``-padded input; torch's gradient (:func:`_xla_bwd`)."""
    return _xla_fwd(x, kernel, stride, pads)[0]


def _xla_fwd(x: jax.Array, kernel: Pair, stride: Pair, pads: Pads
             ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = lax.reduce_window(_pad_input(x, pads), np.array(-np.inf, x.dtype), lax.max,
                          (1, *kernel, 1), (1, *stride, 1), "VALID")
    return y, (x, y)


def _window_positions(hp: int, wp: int, kernel: Pair, stride: Pair, out: Pair) -> np.ndarray:
    """``(oh, ow, kh * kw)`` int32: the flat position (in ``hp * wp``) of each window's
    elements, in ATen's scan order (window row, then column)."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out
    rows = np.arange(oh)[:, None, None, None] * sh + np.arange(kh)[None, None, :, None]
    cols = np.arange(ow)[None, :, None, None] * sw + np.arange(kw)[None, None, None, :]
    return (rows * wp + cols).reshape(oh, ow, kh * kw).astype(np.int32)


def _xla_bwd(kernel: Pair, stride: Pair, pads: Pads, res: tuple[jax.Array, jax.Array],
             g: jax.Array) -> tuple[jax.Array]:
    """Gather every window ``(N, oh, ow, kh * kw, C)``, pick torch's element (the last NaN if
    any, else the first element equal to the maximum), scatter-add ``g`` there."""
    x, y = res
    xp = _pad_input(x, pads)
    n, hp, wp, c = xp.shape
    pos = _window_positions(hp, wp, kernel, stride, y.shape[1:3])
    windows = xp.reshape(n, hp * wp, c)[:, pos, :]
    taps = pos.shape[-1]
    first_max = jnp.argmax(windows == y[:, :, :, None, :], axis=3)
    nan = jnp.isnan(windows)
    last_nan = taps - 1 - jnp.argmax(nan[:, :, :, ::-1, :], axis=3)
    pick = jnp.where(jnp.any(nan, axis=3), last_nan, first_max)  # (N, oh, ow, C)
    where = jnp.asarray(pos)[None, :, :, :, None]
    flat = jnp.take_along_axis(jnp.broadcast_to(where, windows.shape), pick[:, :, :, None, :],
                               axis=3)[:, :, :, 0, :]
    dxp = jnp.zeros((n, hp * wp, c), g.dtype).at[
        jnp.arange(n)[:, None, None, None], flat, jnp.arange(c)[None, None, None, :]
    ].add(g)
    return (_crop(dxp.reshape(n, hp, wp, c), x.shape, pads),)


max_pool2d_xla.defvjp(_xla_fwd, _xla_bwd)


# --- the fast CPU formulation ---------------------------------------------------------------


def _window_taps(xp: jax.Array, k: Pair, s: Pair, outs: Pair) -> list[jax.Array]:
    """The ``k[0] * k[1]`` strided views ``(N, oh, ow, C)`` of a padded input, in torch's scan
    order (window row, then column): tap ``i * k[1] + j`` is element ``(i, j)`` of every
    window."""
    n, _, _, c = xp.shape
    return [
        lax.slice(xp, (0, i, j, 0), (n, i + (outs[0] - 1) * s[0] + 1,
                                      j + (outs[1] - 1) * s[1] + 1, c), (1, *s, 1))
        for i in range(k[0]) for j in range(k[1])
    ]


def _first_max_index(xp: jax.Array, y: jax.Array, k: Pair, s: Pair) -> jax.Array:
    """The tap of each window that torch's max pooling picks (int32 ``(N, oh, ow, C)``)."""
    taps = _window_taps(xp, k, s, y.shape[1:3])
    idx = jnp.zeros(y.shape, jnp.int32)
    for t in reversed(range(len(taps))):
        idx = jnp.where(taps[t] == y, t, idx)
    for t in range(1, len(taps)):
        idx = jnp.where(jnp.isnan(taps[t]), t, idx)
    return idx


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool2d_cpu(x: jax.Array, kernel: Pair, stride: Pair, pads: Pads) -> jax.Array:
    """:func:`max_pool2d_xla`'s numbers: the forward pass is the maximum of the window's
    strided views, the backward pass writes each view's share directly (one padded add per
    tap, or one reshape when the windows tile the input)."""
    return _cpu_fwd(x, kernel, stride, pads)[0]


def _cpu_fwd(x: jax.Array, kernel: Pair, stride: Pair, pads: Pads
             ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    xp = _pad_input(x, pads)
    taps = _window_taps(xp, kernel, stride, _out_sizes(xp.shape, kernel, stride))
    y = taps[0]
    for t in taps[1:]:
        y = lax.max(y, t)  # propagates NaN, as torch
    return y, (x, y)


def _cpu_bwd(kernel: Pair, stride: Pair, pads: Pads, res: tuple[jax.Array, jax.Array],
             g: jax.Array) -> tuple[jax.Array]:
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
    return (_crop(dxp, x.shape, pads),)


max_pool2d_cpu.defvjp(_cpu_fwd, _cpu_bwd)
