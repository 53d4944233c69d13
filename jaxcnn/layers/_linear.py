"""Conv2d and Linear with torch's hyper-parameters, padding and default init (NHWC inputs)."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._base import Layer, ShapeError, TorchVar, pair, torch_uniform
from ._pooling import materialize


def _bias_var(n: int) -> TorchVar:
    return TorchVar("params", "bias", "bias", (n,), (n,))


Pair = tuple[int, int]

#: Largest im2col matrix (bytes) that the backward pass builds for any layer, and for layers
#: with at least :data:`WIDE` output channels; other layers take their gradients as
#: convolutions (:func:`_use_patches`).
PATCHES_LIMIT = 128 * 2**20
PATCHES_LIMIT_WIDE = 2**30
WIDE = 64


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: Pair, padding: Pair) -> jax.Array:
    (ph, pw) = padding
    return lax.conv_general_dilated(x, kernel, window_strides=stride,
                                    padding=((ph, ph), (pw, pw)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _out_size(size: int, k: int, s: int) -> int:
    return (size - k) // s + 1


def _pad(x: jax.Array, padding: Pair) -> jax.Array:
    if padding == (0, 0):
        return x
    (ph, pw) = padding
    return lax.pad(x, np.array(0, x.dtype), ((0, 0, 0), (ph, ph, 0), (pw, pw, 0), (0, 0, 0)))


def _strided(x: jax.Array, axis: int, start: int, count: int, step: int) -> jax.Array:
    """``x[..., start : start + (count - 1) * step + 1 : step, ...]`` along ``axis``."""
    begin = [0] * x.ndim
    end = list(x.shape)
    strides = [1] * x.ndim
    begin[axis], end[axis], strides[axis] = start, start + (count - 1) * step + 1, step
    return lax.slice(x, begin, end, strides)


def _patches_t(xp: jax.Array, kernel: Pair, stride: Pair, out: Pair) -> jax.Array:
    """The transposed im2col matrix of a padded NHWC input: ``(kh * kw * C, N * oh * ow)``,
    rows in HWI order (so ``patches_t @ g`` is an HWIO kernel gradient).

    Built from ``kh`` row views, then ``kw`` column views of those, of the channels-first
    input: stacks of contiguous copies along the leading axis (a concatenation of all views
    along the channels is several times slower on XLA's CPU backend).
    """
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out
    xt = jnp.transpose(xp, (3, 0, 1, 2)) if xp.shape[3] > 1 else xp.reshape(1, *xp.shape[:3])
    rows = jnp.stack([_strided(xt, 2, i, oh, sh) for i in range(kh)])  # kh C N oh Wp
    cols = jnp.stack([_strided(rows, 4, j, ow, sw) for j in range(kw)], axis=1)
    return cols.reshape(kh * kw * xp.shape[3], xp.shape[0] * oh * ow)


def _input_grad(g: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], stride: Pair,
                padding: Pair) -> jax.Array:
    """The input gradient ``(N, H, W, C)`` of a convolution from its output gradient ``g``
    ``(N, oh, ow, O)``: the convolution of ``g`` (dilated by the stride, padded) with the
    flipped kernel, which is materialised in HWIO (``(kh, kw, O, C)``) first. (Left to itself
    XLA may fold the flip and transpose into the convolution's dimension labels, e.g. inside a
    ``lax.scan``, and its CPU backend then runs a generic convolution 5x slower.)"""
    kh, kw = kernel.shape[:2]
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = g.shape[1:3]
    (flipped,) = materialize(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    pads = ((kh - 1 - ph, x_shape[1] - 1 - (oh - 1) * sh + ph),
            (kw - 1 - pw, x_shape[2] - 1 - (ow - 1) * sw + pw))
    return lax.conv_general_dilated(g, flipped, window_strides=(1, 1), padding=pads,
                                    lhs_dilation=stride,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _kernel_grad(x: jax.Array, g: jax.Array, kernel: Pair, stride: Pair, padding: Pair
                 ) -> jax.Array:
    """The HWIO kernel gradient ``(kh, kw, C, O)`` of a convolution as a convolution in the
    standard layouts: the padded input as ``(C, Hp, Wp, N)`` (channels as the batch, the batch
    as features) with the output gradient as an ``(oh, ow, N, O)`` kernel dilated by the
    stride. Both transposes are materialised (see :func:`_input_grad`: left to itself XLA may
    fold them into the convolution's dimension labels and run a generic convolution)."""
    kh, kw = kernel
    xt, gt = materialize(jnp.transpose(_pad(x, padding), (3, 1, 2, 0)),
                         jnp.transpose(g, (1, 2, 0, 3)))
    dk = lax.conv_general_dilated(xt, gt, window_strides=(1, 1), padding=((0, 0), (0, 0)),
                                  rhs_dilation=stride,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.transpose(dk[:, :kh, :kw, :], (1, 2, 0, 3))


def _use_patches(x_shape: tuple[int, ...], g_shape: tuple[int, ...],
                 kernel_shape: tuple[int, ...]) -> bool:
    """Kernel gradient as an im2col matrix product, or as a convolution?

    Measured on a 2-core CPU: for wide layers (64+ output channels: AlexNet's, NiN's) the
    convolution is 3-6x slower than the matrix product even with an im2col matrix of several
    hundred MB; for narrow layers with a big matrix (VGG's first blocks at 224x224) building
    the matrix costs more than it saves.
    """
    limit = PATCHES_LIMIT_WIDE if kernel_shape[3] >= WIDE else PATCHES_LIMIT
    return _matrix_bytes(x_shape, g_shape, kernel_shape[:2]) <= limit


def _matrix_bytes(x_shape: tuple[int, ...], g_shape: tuple[int, ...], kernel: Pair) -> int:
    """float32 bytes of the im2col matrix ``(N * oh * ow, kh * kw * C)``."""
    return 4 * g_shape[0] * g_shape[1] * g_shape[2] * kernel[0] * kernel[1] * x_shape[3]


def _shift_conv(xp: jax.Array, kernel: jax.Array, stride: Pair) -> jax.Array:
    """A one-input-channel convolution as a sum of ``kh * kw`` scaled views: one elementwise
    loop for XLA (its convolution is slow for ``C = 1``)."""
    kh, kw, _, _ = kernel.shape
    oh, ow = (_out_size(xp.shape[1 + a], kernel.shape[a], stride[a]) for a in range(2))
    out = None
    for i in range(kh):
        view = _strided(xp, 1, i, oh, stride[0])
        for j in range(kw):
            term = _strided(view, 2, j, ow, stride[1]) * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


def _use_shift(cin: int, kernel: Pair, cout: int) -> bool:
    return cin == 1 and kernel[0] * kernel[1] * cout <= 1024


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d_nhwc(x: jax.Array, kernel: jax.Array, stride: Pair, padding: Pair) -> jax.Array:
    """Torch's ``conv2d`` (no dilation, one group, zero padding) on NHWC ``x`` ``(N, H, W, C)``
    with an HWIO ``kernel``: ``(N, oh, ow, O)``.

    The same numbers as ``lax.conv_general_dilated`` (up to float32 summation order), computed
    on CPUs in forms XLA's CPU backend runs faster for small layers: a small one-channel
    convolution as a sum of shifted views; the kernel gradient as a matrix product of the
    transposed im2col matrix with the output gradient where that matrix is small enough
    (:func:`_use_patches`), else as a convolution in standard layouts (:func:`_kernel_grad`);
    the input gradient as XLA's, with the flipped kernel laid out for the fast path
    (:func:`_input_grad`). (Measured on a 2-core CPU: a col2im input
    gradient, 2x faster alone, made the whole LeNet step 20% slower.)
    """
    return _conv_fwd(x, kernel, stride, padding)[0]


def _cpu() -> bool:
    """Whether JAX's default backend (where jitted code runs unless told otherwise) is the
    CPU: the CPU formulations below are chosen at trace time; GPUs get XLA's (cuDNN's)."""
    return jax.default_backend() == "cpu"


def _conv_fwd(x: jax.Array, kernel: jax.Array, stride: Pair, padding: Pair
              ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    kh, kw, cin, cout = kernel.shape
    if _cpu() and _use_shift(cin, (kh, kw), cout):
        # Materialised: XLA would otherwise recompute the kh * kw taps in every consumer.
        (y,) = materialize(_shift_conv(_pad(x, padding), kernel, stride))
    else:
        y = _xla_conv(x, kernel, stride, padding)
    return y, (x, kernel)


def _conv_bwd(stride: Pair, padding: Pair, res: tuple[jax.Array, jax.Array], g: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    if not _cpu():  # XLA's own (cuDNN's) gradients
        return jax.vjp(lambda a, b: _xla_conv(a, b, stride, padding), x, kernel)[1](g)
    kh, kw, _, cout = kernel.shape
    n, oh, ow, _ = g.shape
    if _use_patches(x.shape, g.shape, kernel.shape):
        patches_t = _patches_t(_pad(x, padding), (kh, kw), stride, (oh, ow))
        dk = jnp.dot(patches_t, g.reshape(n * oh * ow, cout)).reshape(kernel.shape)
    else:
        dk = _kernel_grad(x, g, (kh, kw), stride, padding)
    return _input_grad(g, kernel, x.shape, stride, padding), dk


conv2d_nhwc.defvjp(_conv_fwd, _conv_bwd)


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
        y = conv2d_nhwc(x, kernel.astype(x.dtype), pair(self.stride), pair(self.padding))
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
