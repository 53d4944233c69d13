"""The book's ``FlattenLayer``: flatten in torch's (C, H, W) order."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .base import Layer


class FlattenLayer(Layer):
    """The book's ``FlattenLayer`` (``x.view(N, -1)``), in torch's order.

    An NHWC input ``(N, H, W, C)`` is flattened in (C, H, W) order, so a Linear imported from a
    torch model applies unchanged; other inputs flatten every axis after the first.
    """

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return flatten_torch_order(x)


def flatten_torch_order(x: jax.Array) -> jax.Array:
    """``(N, H, W, C) -> (N, C*H*W)`` in torch's (C, H, W) order; ``(N, ...) -> (N, -1)``."""
    if x.ndim == 4:
        x = jnp.transpose(x, (0, 3, 1, 2))
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: an empty batch works
