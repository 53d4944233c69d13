"""Training-mode batch normalisation of ``(M, C)`` (rows: the batch and spatial positions,
columns: the channels), with the closed-form gradient.

The per-channel sums are ``jnp.sum(axis=0)`` (the definition), or, when the fast CPU kernels
are selected (:func:`~jaxcnn.ops.select.fast_cpu_kernels`), :func:`channel_sum_cpu`: the same
sums with a narrow ``C`` folded into wider rows, which XLA's CPU backend reduces several times
faster (a different summation order).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from .select import fast_cpu_kernels

#: Rows of a narrow ``(M, C)`` are folded until they hold at least this many values.
FOLD_WIDTH = 64


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
    """
    return _batch_norm(x2, scale, bias, eps, divide, fast_cpu_kernels())


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm(x2: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, divide: bool,
                fast: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    return _bn_fwd(x2, scale, bias, eps, divide, fast)[0]


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
