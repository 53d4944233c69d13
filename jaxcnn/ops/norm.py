"""Training-mode batch normalisation of ``(M, C)`` (rows: the batch and spatial positions,
columns: the channels), with the closed-form gradient.

The per-channel sums are ``jnp.sum(axis=0)`` (the definition), or, when the fast CPU kernels
are selected (:func:`~jaxcnn.ops.select.fast_cpu_kernels`), :func:`channel_sum_cpu`: the same
sums with a narrow ``C`` folded into wider rows, which XLA's CPU backend reduces several times
faster (a different summation order).

A padded batch (the epoch's partial last batch filled up to the full batch size, so that every
training call has one shape) sets per-example weights with :func:`example_weights` while it is
traced: 1 for a real example, 0 for padding. The batch statistics are then those of the real
examples only, and the gradient is the one of the real examples (padding receives none).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from .select import fast_cpu_kernels

#: Rows of a narrow ``(M, C)`` are folded until they hold at least this many values.
FOLD_WIDTH = 64

_weights: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar(
    "jaxcnn_example_weights", default=None)


@contextlib.contextmanager
def example_weights(weights: jax.Array | None) -> Iterator[None]:
    """Trace the block with per-example ``weights`` (float ``(N,)``, 1 for a real example, 0
    for padding) for every :func:`batch_norm_train` of a batch of ``N`` examples; ``None``:
    all examples are real. Read at trace time (per thread)."""
    token = _weights.set(weights)
    try:
        yield
    finally:
        _weights.reset(token)


def _per_example(m: int) -> tuple[jax.Array, int] | None:
    """The current example weights and the rows each example has in a ``(M, C)`` view of the
    batch (e.g. its spatial positions); ``None`` when :func:`example_weights` is not set."""
    w = _weights.get()
    if w is None:
        return None
    n = w.shape[0]
    if m % n:
        raise ValueError(f"batch_norm_train: {m} rows are not a whole number of rows for each "
                         f"of the {n} weighted examples")
    return w, m // n


def row_weights(m: int) -> tuple[jax.Array, jax.Array] | None:
    """``(weights, count)`` of the ``m`` rows of a ``(M, C)`` view of the current batch: each
    example's weight repeated over its rows, and the weighted row count (a float scalar);
    ``None`` when :func:`example_weights` is not set."""
    current = _per_example(m)
    if current is None:
        return None
    w, per = current
    # Each weight copied over its example's rows by a gather at ``row // per``. jnp.repeat
    # with a total length built a scatter, a cumulative sum and a gather into every program
    # (LeNet-BN's training call: 421 fusions, now 372; compiled in 3.4 s, now 2.9 s); a
    # broadcast and reshape (365 fusions) let XLA reorder the sums over the rows, 1 ulp from
    # the plain path's with every weight 1.
    rows = w[lax.iota(jnp.int32, m) // per]
    return rows, jnp.sum(w) * per


def weighted_rows(m: int) -> int | jax.Array:
    """How many rows of a ``(M, C)`` view of the current batch are real: ``m``, or the
    weighted count (a traced float) under :func:`example_weights`."""
    current = _per_example(m)
    return m if current is None else jnp.sum(current[0]) * current[1]


def channel_sum_xla(x2: jax.Array) -> jax.Array:
    """The definition: ``x2.sum(axis=0)``, ``(M, C) -> (C,)``."""
    return jnp.sum(x2, axis=0)


def channel_sum_cpu(x2: jax.Array) -> jax.Array:
    """``x2.sum(axis=0)`` of ``(M, C)``; a narrow ``C`` is first folded into rows of at least
    :data:`FOLD_WIDTH` values (``(M / k, k * C)``), summed, then the ``k`` partial sums."""
    m, c = x2.shape
    k = 1
    while m % (2 * k) == 0 and k * c < FOLD_WIDTH:
        k *= 2
    if k == 1:
        return jnp.sum(x2, axis=0)
    return jnp.sum(x2.reshape(m // k, k * c), axis=0).reshape(k, c).sum(axis=0)


def batch_norm_train(x2: jax.Array, scale: jax.Array, bias: jax.Array, eps: float,
                     divide: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode batch normalisation of ``x2`` ``(M, C)`` with ``scale`` and ``bias``
    ``(C,)``: ``(y (M, C), mean (C,), biased var (C,))``.

    ``y = (x - mean) * rsqrt(var + eps) * scale + bias`` (``divide``: ``(x - mean) /
    sqrt(var + eps) * scale + bias``, the book's formula). The gradient is the closed form
    (``dbias = sum(g)``, ``dscale = sum(g * x_hat)``, ``dx = scale / std * (g - mean(g) - x_hat
    * mean(g * x_hat))``): two reductions and one elementwise pass, where autodiff of the
    forward gives XLA twice as many passes.

    Under :func:`example_weights` the mean and variance are those of the real rows (weight 1),
    every row is normalised with them, and ``dx`` is zero on padding rows.
    """
    rows = row_weights(x2.shape[0])
    if rows is None:
        return _batch_norm(x2, scale, bias, eps, divide, fast_cpu_kernels())
    w, count = rows
    return _weighted_batch_norm(x2, scale, bias, w.astype(x2.dtype), count.astype(x2.dtype),
                                eps, divide, fast_cpu_kernels())


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm(x2: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, divide: bool,
                fast: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    return _bn_fwd(x2, scale, bias, eps, divide, fast)[0]


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _weighted_batch_norm(x2: jax.Array, scale: jax.Array, bias: jax.Array, w: jax.Array,
                         count: jax.Array, eps: float, divide: bool, fast: bool
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
    return _wbn_fwd(x2, scale, bias, w, count, eps, divide, fast)[0]


def _sum(fast: bool) -> Callable[[jax.Array], jax.Array]:
    return channel_sum_cpu if fast else channel_sum_xla


def _bn_fwd(x2: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, divide: bool,
            fast: bool
            ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], tuple[jax.Array, ...]]:
    channel_sum = _sum(fast)
    m = x2.shape[0]
    mean = channel_sum(x2) / m
    d = x2 - mean
    var = channel_sum(d * d) / m
    x_hat = d / jnp.sqrt(var + eps) if divide else d * lax.rsqrt(var + eps)
    return (x_hat * scale + bias, mean, var), (x2, mean, var, scale)


def _bn_bwd(eps: float, divide: bool, fast: bool, res: tuple[jax.Array, ...],
            cts: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
    channel_sum = _sum(fast)
    g, g_mean, g_var = cts
    x2, mean, var, scale = res
    m = x2.shape[0]
    inv = lax.rsqrt(var + eps)
    d = x2 - mean
    x_hat = d * inv
    dbias = channel_sum(g)
    dscale = channel_sum(g * x_hat)
    dx = (scale * inv) * (g - dbias / m - x_hat * (dscale / m))
    # The statistics' own cotangents (zero when only y is differentiated).
    dx = dx + g_mean / m + g_var * (2.0 / m) * d
    return dx, dscale, dbias


_batch_norm.defvjp(_bn_fwd, _bn_bwd)


def _wbn_fwd(x2: jax.Array, scale: jax.Array, bias: jax.Array, w: jax.Array, count: jax.Array,
             eps: float, divide: bool, fast: bool
             ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], tuple[jax.Array, ...]]:
    # Sums times 1 / count: XLA turns the plain path's division by the constant M into that
    # product, so that with every weight 1 the numbers are the plain path's, bit for bit.
    channel_sum = _sum(fast)
    wc = w[:, None]
    inv_count = 1.0 / count
    mean = channel_sum(x2 * wc) * inv_count
    d = x2 - mean
    var = channel_sum((d * wc) * d) * inv_count  # (d * 1) * d: the plain path's product
    x_hat = d / jnp.sqrt(var + eps) if divide else d * lax.rsqrt(var + eps)
    return (x_hat * scale + bias, mean, var), (x2, mean, var, scale, w, inv_count)


def _wbn_bwd(eps: float, divide: bool, fast: bool, res: tuple[jax.Array, ...],
             cts: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
    # _bn_bwd's formula over the real rows: ``g`` is zero on padding rows (the loss ignores
    # them), so the sums are the real rows'; padding rows get no gradient (the weight factor,
    # applied last: times 1 leaves the plain path's numbers).
    channel_sum = _sum(fast)
    g, g_mean, g_var = cts
    x2, mean, var, scale, w, inv_count = res
    inv = lax.rsqrt(var + eps)
    d = x2 - mean
    x_hat = d * inv
    dbias = channel_sum(g)
    dscale = channel_sum(g * x_hat)
    dx = (scale * inv) * (g - dbias * inv_count - x_hat * (dscale * inv_count))
    dx = dx + g_mean * inv_count + g_var * (2.0 * inv_count) * d
    return dx * w[:, None], dscale, dbias, jnp.zeros_like(w), jnp.zeros_like(inv_count)


_weighted_batch_norm.defvjp(_wbn_fwd, _wbn_bwd)
