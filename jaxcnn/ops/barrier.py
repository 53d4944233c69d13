"""A fusion barrier for the fast CPU formulations (:mod:`jaxcnn.ops.select`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _cond_barrier(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    """The arrays through a conditional whose predicate is always true but only known at run
    time (its other branch, zeros, is never taken): XLA cannot fuse across it."""
    p = arrays[0].reshape(-1)[0].astype(jnp.float32)
    return tuple(lax.cond(jnp.isnan(p) | (p == p), lambda *u: u,
                          lambda *u: tuple(jnp.zeros_like(a) for a in u), *arrays))


def _optimization_barrier(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    """The candidate replacement, ``lax.optimization_barrier`` (not used: see
    :func:`materialize`)."""
    return tuple(lax.optimization_barrier(arrays))


def materialize(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    """The arrays themselves, each computed once.

    XLA's CPU fusion would otherwise inline their producers (the window index; the incoming
    gradient, e.g. a convolution's col2im sum) into every element that reads them: ``kh * kw``
    times per value. Only the fast CPU formulations call it.

    The barrier is a conditional (:func:`_cond_barrier`). ``lax.optimization_barrier`` was
    measured as a replacement: LeNet-BN's jitted ``train_step`` at batch 256, 20 steps per
    round, 5 rounds alternating the two, on a shared 2-core CPU (load ~6, so noisy): the
    conditional took 86-105 ms a step (median 92), the optimization barrier 81-215 ms (median
    111). No gain, so the conditional stays (which also keeps the compiled steps unchanged).
    """
    return _cond_barrier(*arrays)
