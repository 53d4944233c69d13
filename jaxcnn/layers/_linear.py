"""Conv2d and Linear with torch's hyper-parameters, padding and default init (NHWC inputs)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._base import Layer, ShapeError, TorchVar, pair, torch_uniform


def _bias_var(n: int) -> TorchVar:
    return TorchVar("params", "bias", "bias", (n,), (n,))


class Conv2d(Layer):
    """``torch.nn.Conv2d`` on NHWC input.

    Input ``(N, H, W, in_channels)``; output ``(N, H', W', out_channels)`` with
    ``H' = floor((H + 2 * padding - kernel) / stride) + 1``. The padding is explicit and
    symmetric (zeros), as torch's, never Flax's ``'SAME'``. Kernel layout HWIO,
    ``(kh, kw, in_channels, out_channels)``; torch stores OIHW.
    """

    in_channels: int
    out_channels: int
    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    use_bias: bool = True

    def _kernel_shape(self) -> tuple[int, int, int, int]:
        kh, kw = pair(self.kernel_size)
        return (kh, kw, self.in_channels, self.out_channels)

    def torch_variables(self) -> tuple[TorchVar, ...]:
        kh, kw, cin, cout = self._kernel_shape()
        kernel = TorchVar(
            "params", "kernel", "weight", (kh, kw, cin, cout), (cout, cin, kh, kw),
            to_torch=lambda a: np.transpose(a, (3, 2, 0, 1)),
            from_torch=lambda a: np.transpose(a, (2, 3, 1, 0)),
        )
        return (kernel, _bias_var(cout)) if self.use_bias else (kernel,)

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={pair(self.kernel_size)}, "
            f"stride={pair(self.stride)}"
        )
        if pair(self.padding) != (0, 0):
            s += f", padding={pair(self.padding)}"
        if not self.use_bias:
            s += ", bias=False"
        return s

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_ndim(x, (4,), "NHWC")
        if x.shape[-1] != self.in_channels:
            raise ShapeError(
                f"{self.where()}: expected {self.in_channels} channels in the last axis (NHWC), "
                f"got shape {tuple(x.shape)}; an NCHW array converts with jaxcnn.nchw_to_nhwc"
            )
        kh, kw, cin, cout = self._kernel_shape()
        fan_in = cin * kh * kw
        kernel = self.param("kernel", torch_uniform(fan_in), (kh, kw, cin, cout))
        ph, pw = pair(self.padding)
        y = lax.conv_general_dilated(
            x, kernel.astype(x.dtype),
            window_strides=pair(self.stride),
            padding=((ph, ph), (pw, pw)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bias = self.param("bias", torch_uniform(fan_in), (cout,))
            y = y + bias.astype(y.dtype)
        return y


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
        return (kernel, _bias_var(o)) if self.use_bias else (kernel,)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.use_bias}"
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
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
