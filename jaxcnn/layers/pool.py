"""Pooling with torch's output sizes: floor or ceil mode, implicit padding, adaptive bins."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ..ops import avg_pool2d, max_pool2d
from .base import Layer, ShapeError, pair


def pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Torch's pooled length of one spatial axis (``pooling_output_shape`` in ATen)."""
    span = size + 2 * padding - kernel
    if ceil_mode:
        out = -(-span // stride) + 1
        # The last window must start inside the input or the left padding.
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    return out


class _Pool2d(Layer):
    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None
    padding: int | tuple[int, int] = 0
    ceil_mode: bool = False

    def _geometry(self, x: jax.Array) -> tuple[list[int], list[int], list[int], list[int]]:
        self.check_ndim(x, (4,), "NHWC")
        k = pair(self.kernel_size)
        s = pair(self.stride) if self.stride is not None else k
        p = pair(self.padding)
        for ki, pi in zip(k, p, strict=True):
            if pi > ki // 2:
                raise ValueError(
                    f"{self.where()}: padding {p} must be at most half the kernel size {k} "
                    "(torch refuses it too)"
                )
        outs = []
        for size, ki, si, pi in zip(x.shape[1:3], k, s, p, strict=True):
            o = pool_output_size(size, ki, si, pi, self.ceil_mode)
            if o < 1:
                raise ShapeError(
                    f"{self.where()}: input of spatial size {tuple(x.shape[1:3])} is too small "
                    f"for kernel {k}, stride {s}, padding {p} (shape {tuple(x.shape)}, NHWC)"
                )
            outs.append(o)
        return list(k), list(s), list(p), outs

    @staticmethod
    def _pads(size: int, k: int, s: int, p: int, out: int) -> tuple[int, int]:
        # Right padding so that exactly `out` windows fit (ceil mode may need more than p).
        hi = max((out - 1) * s + k - size - p, 0)
        return (p, hi)

    def extra_repr(self) -> str:
        k = self.kernel_size
        s = self.stride if self.stride is not None else k
        return f"kernel_size={k}, stride={s}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """``torch.nn.MaxPool2d`` on NHWC input (padding is -inf, floor or ceil mode)."""

    def extra_repr(self) -> str:
        return super().extra_repr() + f", dilation=1, ceil_mode={self.ceil_mode}"

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        k, s, p, outs = self._geometry(x)
        pads = tuple(self._pads(x.shape[1 + i], k[i], s[i], p[i], outs[i]) for i in range(2))
        return max_pool2d(x, tuple(k), tuple(s), pads)


class AvgPool2d(_Pool2d):
    """``torch.nn.AvgPool2d`` on NHWC input, with torch's divisor in every mode.

    The divisor of a window counts the padding when ``count_include_pad`` (never the extra
    right-hand region that ``ceil_mode`` adds), as ATen does; ``divisor_override`` replaces it.
    """

    count_include_pad: bool = True
    divisor_override: int | None = None

    def _divisor(self, size: int, k: int, s: int, p: int, out: int) -> np.ndarray:
        start = np.arange(out) * s - p
        end = np.minimum(start + k, size + p)
        full = end - start
        clipped = np.minimum(end, size) - np.maximum(start, 0)
        return (full if self.count_include_pad else clipped).astype(np.float64)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        k, s, p, outs = self._geometry(x)
        pads = tuple(self._pads(x.shape[1 + i], k[i], s[i], p[i], outs[i]) for i in range(2))
        if self.divisor_override is not None:
            return avg_pool2d(x, tuple(k), tuple(s), pads, self.divisor_override)
        dh = self._divisor(x.shape[1], k[0], s[0], p[0], outs[0])
        dw = self._divisor(x.shape[2], k[1], s[1], p[1], outs[1])
        return avg_pool2d(x, tuple(k), tuple(s), pads, np.outer(dh, dw)[None, :, :, None])


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """Torch's adaptive-pool bins ``[floor(i * size / out), ceil((i + 1) * size / out))``."""
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


class AdaptiveAvgPool2d(Layer):
    """``torch.nn.AdaptiveAvgPool2d``: ``(N, H, W, C) -> (N, oh, ow, C)`` with torch's bins."""

    output_size: int | tuple[int, int]

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_ndim(x, (4,), "NHWC")
        oh, ow = pair(self.output_size)
        h, w = x.shape[1:3]
        if h % oh == 0 and w % ow == 0:  # equal bins: one reshape-mean
            n, _, _, c = x.shape
            return x.reshape(n, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))
        rows = [x[:, a:b].mean(axis=1, keepdims=True) for a, b in adaptive_bins(h, oh)]
        xh = jnp.concatenate(rows, axis=1)
        cols = [xh[:, :, a:b].mean(axis=2, keepdims=True) for a, b in adaptive_bins(w, ow)]
        return jnp.concatenate(cols, axis=2)


class GlobalAvgPool2d(Layer):
    """The book's ``GlobalAvgPool2d``: mean over the whole map, ``(N, H, W, C) -> (N, 1, 1, C)``."""

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_ndim(x, (4,), "NHWC")
        return jnp.mean(x, axis=(1, 2), keepdims=True)
