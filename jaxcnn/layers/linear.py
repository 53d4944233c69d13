"""``Linear`` with torch's default init."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .base import Layer, ShapeError, TorchVar, bias_var, torch_uniform


class Linear(Layer):
    """``torch.nn.Linear``: ``(..., in_features) -> (..., out_features)``.

    Kernel layout ``(in_features, out_features)``; torch stores the transpose.
    """

    in_features: int
    out_features: int
    use_bias: bool = True

    def torch_variables(self) -> tuple[TorchVar, ...]:
        i, o = self.in_features, self.out_features
        kernel = TorchVar(
            "params", "kernel", "weight", (i, o), (o, i),
            to_torch=lambda a: np.transpose(a), from_torch=lambda a: np.transpose(a),
        )
        return (kernel, bias_var(o)) if self.use_bias else (kernel,)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.use_bias}"
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_float(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ShapeError(
                f"{self.where()}: expected {self.in_features} features in the last axis, got "
                f"shape {tuple(x.shape)}; check the input size the model was built for"
            )
        kernel = self.param("kernel", torch_uniform(self.in_features),
                            (self.in_features, self.out_features))
        y = jnp.dot(x, kernel.astype(x.dtype))
        if self.use_bias:
            bias = self.param("bias", torch_uniform(self.in_features), (self.out_features,))
            y = y + bias.astype(y.dtype)
        return y
