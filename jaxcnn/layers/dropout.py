"""``Dropout`` with explicit, recordable masks."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from .base import Layer


class Dropout(Layer):
    """``torch.nn.Dropout``: in training, zero each element with probability ``p`` and scale
    the rest by ``1 / (1 - p)``; identity in evaluation.

    The mask is drawn from the ``'dropout'`` rng, unless the variables carry one in the
    ``dropout_masks`` collection (leaf ``mask``, boolean, the input's shape): then that mask is
    used, which makes a train-mode forward reproducible across frameworks. Applying with
    ``mutable=['dropout_masks']`` and no masks records the masks that were drawn.
    """

    p: float = 0.5

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace=False"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"{self.where()}: p must be in [0, 1], got {self.p}")
        if not train or self.p == 0.0:
            return x
        if self.p == 1.0:
            return jnp.zeros_like(x)

        def draw() -> jax.Array:
            return jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.p, x.shape)

        if self.has_variable("dropout_masks", "mask") or self.is_mutable_collection(
            "dropout_masks"
        ):
            mask = self.variable("dropout_masks", "mask", draw).value
            if mask.shape != x.shape:
                raise ValueError(
                    f"{self.where()}: dropout mask has shape {tuple(mask.shape)}, the input "
                    f"{tuple(x.shape)}"
                )
        else:
            mask = draw()
        return jnp.where(mask, x * jnp.asarray(1.0 / (1.0 - self.p), x.dtype), 0).astype(x.dtype)
