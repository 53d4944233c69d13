"""BatchNorm with torch semantics, and the book's hand-written BatchNorm.

Both keep their statistics in the ``batch_stats`` collection; in training mode call the model
with ``mutable=['batch_stats']``.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..ops import batch_norm_train
from ..ops.norm import weighted_rows
from .base import Layer, ShapeError, TorchVar


class _TorchBatchNorm(Layer):
    """Shared body of ``BatchNorm1d`` / ``BatchNorm2d`` (channels in the last axis).

    Training: normalise with the batch mean and the *biased* batch variance; update
    ``running = (1 - momentum) * running + momentum * batch_stat`` with the *unbiased*
    variance, and ``num_batches_tracked += 1``. ``momentum=None`` is torch's cumulative
    average (factor ``1 / num_batches_tracked``). Evaluation: normalise with the running stats.
    """

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True

    _ndims: ClassVar[tuple[int, ...]] = ()
    _layout: ClassVar[str] = ""

    def torch_variables(self) -> tuple[TorchVar, ...]:
        c = (self.num_features,)
        out = []
        if self.affine:
            out += [TorchVar("params", "scale", "weight", c, c),
                    TorchVar("params", "bias", "bias", c, c)]
        out += [
            TorchVar("batch_stats", "mean", "running_mean", c, c),
            TorchVar("batch_stats", "var", "running_var", c, c),
            TorchVar("batch_stats", "num_batches_tracked", "num_batches_tracked", (), (),
                     torch_dtype=np.dtype(np.int64)),
        ]
        return tuple(out)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.affine}, track_running_stats=True"
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_ndim(x, self._ndims, self._layout)
        c = self.num_features
        if x.shape[-1] != c:
            raise ShapeError(
                f"{self.where()}: expected {c} features in the last axis ({self._layout}), "
                f"got shape {tuple(x.shape)}"
            )
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        count = self.variable("batch_stats", "num_batches_tracked",
                              lambda: jnp.zeros((), jnp.int32))
        if self.affine:
            scale = self.param("scale", jax.nn.initializers.ones, (c,), jnp.float32)
            bias = self.param("bias", jax.nn.initializers.zeros, (c,), jnp.float32)
        in_dtype = x.dtype  # bfloat16 (mixed precision) is normalised in float32
        x = x.astype(jnp.promote_types(in_dtype, jnp.float32))
        if not train:
            mean, var = ra_mean.value, ra_var.value
            y = (x - mean.astype(x.dtype)) * lax.rsqrt(var.astype(x.dtype) + self.eps)
            if self.affine:
                y = y * scale.astype(x.dtype) + bias.astype(x.dtype)
            return y.astype(in_dtype)
        n = int(np.prod(x.shape[:-1]))
        if n < 2:
            raise ShapeError(
                f"{self.where()}: training needs more than 1 value per channel, got input "
                f"shape {tuple(x.shape)} (torch refuses it too)"
            )
        if self.affine:
            s_, b_ = scale.astype(x.dtype), bias.astype(x.dtype)
        else:
            s_, b_ = jnp.ones((c,), x.dtype), jnp.zeros((c,), x.dtype)
        # mean and the biased variance normalise the batch; the running statistics are updated
        # with the unbiased one.
        y, mean, var = batch_norm_train(x.reshape(n, c), s_, b_, self.eps)
        if not self.is_initializing():
            new_count = count.value + 1
            # in the statistics' dtype: a float32 constant would round momentum 0.1 by 1.5e-9
            # in a float64 run (the parity suite's float64 referee)
            dtype = ra_var.value.dtype
            if self.momentum is None:
                factor = 1.0 / new_count.astype(dtype)
            else:
                factor = jnp.asarray(self.momentum, dtype)
            real = weighted_rows(n)  # n, or the real rows of a padded batch
            unbiased = var * (n / (n - 1))
            if not isinstance(real, int):  # the same factor when every row is real
                real = real.astype(var.dtype)
                unbiased = jnp.where(real == n, unbiased, var * (real / (real - 1)))
            ra_mean.value = (1 - factor) * ra_mean.value + factor * mean
            ra_var.value = (1 - factor) * ra_var.value + factor * unbiased
            count.value = new_count
        return y.reshape(x.shape).astype(in_dtype)


class BatchNorm1d(_TorchBatchNorm):
    """``torch.nn.BatchNorm1d`` on ``(N, C)`` or channels-last ``(N, L, C)`` input."""

    _ndims: ClassVar[tuple[int, ...]] = (2, 3)
    _layout: ClassVar[str] = "(N, C) or (N, L, C)"


class BatchNorm2d(_TorchBatchNorm):
    """``torch.nn.BatchNorm2d`` on NHWC input ``(N, H, W, C)``."""

    _ndims: ClassVar[tuple[int, ...]] = (4,)
    _layout: ClassVar[str] = "NHWC"


def _nhwc_param(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (0, 3, 1, 2))


def _nchw_param(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (0, 2, 3, 1))


class BatchNorm(Layer):
    """The book's hand-written ``BatchNorm(num_features, num_dims)`` (chapter 5.10).

    ``gamma``/``beta`` (ones/zeros) and ``moving_mean``/``moving_var`` (both **zeros**) have
    shape ``(1, C)`` for ``num_dims=2`` and ``(1, 1, 1, C)`` for ``num_dims=4`` (torch:
    ``(1, C, 1, 1)``). Training normalises with the biased batch variance and updates
    ``moving = momentum * moving + (1 - momentum) * batch_stat`` with that same biased
    variance (momentum 0.9). Evaluation uses the moving statistics.
    """

    num_features: int
    num_dims: int
    eps: float = 1e-5
    momentum: float = 0.9

    def _shape(self) -> tuple[int, ...]:
        if self.num_dims == 2:
            return (1, self.num_features)
        if self.num_dims == 4:
            return (1, 1, 1, self.num_features)
        raise ValueError(f"{self.where()}: num_dims must be 2 or 4, got {self.num_dims}")

    def torch_variables(self) -> tuple[TorchVar, ...]:
        shape = self._shape()
        if self.num_dims == 4:
            tshape = (1, self.num_features, 1, 1)
            kw = {"to_torch": _nhwc_param, "from_torch": _nchw_param}
        else:
            tshape, kw = shape, {}
        return tuple(
            TorchVar(col, name, name, shape, tshape, **kw)
            for col, name in (("params", "gamma"), ("params", "beta"),
                              ("batch_stats", "moving_mean"), ("batch_stats", "moving_var"))
        )

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, num_dims={self.num_dims}"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        shape = self._shape()
        if x.ndim != self.num_dims or x.shape[-1] != self.num_features:
            raise ShapeError(
                f"{self.where()}: expected a {self.num_dims}-D input with {self.num_features} "
                f"channels in the last axis, got shape {tuple(x.shape)}"
            )
        gamma = self.param("gamma", jax.nn.initializers.ones, shape, jnp.float32)
        beta = self.param("beta", jax.nn.initializers.zeros, shape, jnp.float32)
        moving_mean = self.variable("batch_stats", "moving_mean", jnp.zeros, shape, jnp.float32)
        moving_var = self.variable("batch_stats", "moving_var", jnp.zeros, shape, jnp.float32)
        in_dtype = x.dtype  # bfloat16 (mixed precision) is normalised in float32
        x = x.astype(jnp.promote_types(in_dtype, jnp.float32))
        if not train:
            x_hat = (x - moving_mean.value) / jnp.sqrt(moving_var.value + self.eps)
            return (gamma * x_hat + beta).astype(in_dtype)
        c = self.num_features
        y, mean, var = batch_norm_train(x.reshape(-1, c), gamma.reshape(c), beta.reshape(c),
                                        self.eps, True)
        if not self.is_initializing():
            m = self.momentum
            moving_mean.value = m * moving_mean.value + (1.0 - m) * mean.reshape(shape)
            moving_var.value = m * moving_var.value + (1.0 - m) * var.reshape(shape)
        return y.reshape(x.shape).astype(in_dtype)
