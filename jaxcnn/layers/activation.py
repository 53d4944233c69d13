"""Activations: ``ReLU`` and ``Sigmoid``."""

from __future__ import annotations

import jax

from .base import Layer


class ReLU(Layer):
    """``torch.nn.ReLU`` (gradient 0 at 0, as torch)."""

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return jax.nn.relu(x)


class Sigmoid(Layer):
    """``torch.nn.Sigmoid``."""

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return jax.nn.sigmoid(x)
