"""``Conv2d`` with torch's hyper-parameters, padding and default init (NHWC inputs)."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from ..ops import conv2d
from .base import Layer, ShapeError, TorchVar, bias_var, pair, torch_uniform


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
        return (kernel, bias_var(cout)) if self.use_bias else (kernel,)

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
        self.check_float(x)
        self.check_ndim(x, (4,), "NHWC")
        if x.shape[-1] != self.in_channels:
            raise ShapeError(
                f"{self.where()}: expected {self.in_channels} channels in the last axis (NHWC), "
                f"got shape {tuple(x.shape)}; an NCHW array converts with jaxcnn.nchw_to_nhwc"
            )
        kh, kw, cin, cout = self._kernel_shape()
        fan_in = cin * kh * kw
        kernel = self.param("kernel", torch_uniform(fan_in), (kh, kw, cin, cout))
        y = conv2d(x, kernel.astype(x.dtype), pair(self.stride), pair(self.padding))
        if self.use_bias:
            bias = self.param("bias", torch_uniform(fan_in), (cout,))
            y = y + bias.astype(y.dtype)
        return y
