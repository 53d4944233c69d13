"""2-D convolution (torch's ``conv2d``: no dilation, one group, zero padding) on NHWC inputs
with HWIO kernels.

:func:`conv2d_xla` is the definition: ``lax.conv_general_dilated`` and its autodiff gradients.
:func:`conv2d_cpu` computes the same numbers (up to float summation order) in forms that XLA's
CPU backend runs faster for the book's small layers; :func:`conv2d` picks one of the two
(:func:`~jaxcnn.ops.select.fast_cpu_kernels`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .barrier import materialize
from .select import fast_cpu_kernels

Pair = tuple[int, int]

#: Largest im2col matrix (bytes, from the dtype's size) that the fast backward pass builds for
#: any layer, and for layers with at least :data:`WIDE` output channels; other layers take
#: their kernel gradients as convolutions (:func:`use_patches`).
PATCHES_LIMIT = 128 * 2**20
PATCHES_LIMIT_WIDE = 2**30
WIDE = 64
#: The input gradient of a stride-1 layer with at most this many kernel taps times input
#: channels (``kh * kw * C``: LeNet's second layer has 150) is a matrix product and a col2im
#: sum (:func:`use_col2im`), when its ``(N * oh * ow, kh * kw * C)`` matrix is at most
#: :data:`PATCHES_LIMIT` bytes.
COL2IM_WIDTH = 256
#: A one-input-channel convolution is computed as a sum of shifted views when
#: ``kh * kw * out_channels`` is at most this (:func:`use_shift`).
SHIFT_LIMIT = 1024

_DIMS = ("NHWC", "HWIO", "NHWC")


def conv2d_xla(x: jax.Array, kernel: jax.Array, stride: Pair, padding: Pair) -> jax.Array:
    """The definition: ``x`` ``(N, H, W, C)`` convolved with an HWIO ``kernel``
    ``(kh, kw, C, O)``, symmetric zero ``padding`` ``(ph, pw)``: ``(N, oh, ow, O)`` with
    ``oh = (H + 2 * ph - kh) // sh + 1``."""
    (ph, pw) = padding
    return lax.conv_general_dilated(x, kernel, window_strides=stride,
                                    padding=((ph, ph), (pw, pw)), dimension_numbers=_DIMS)


def conv2d(x: jax.Array, kernel: jax.Array, stride: Pair, padding: Pair) -> jax.Array:
    """:func:`conv2d_xla`'s result, computed by :func:`conv2d_cpu` when the fast CPU kernels
    are selected (:func:`~jaxcnn.ops.select.fast_cpu_kernels`, asked at trace time); an empty
    batch takes the XLA definition (an empty result, as torch gives)."""
    if fast_cpu_kernels() and x.shape[0] > 0:
        return conv2d_cpu(x, kernel, stride, padding)
    return conv2d_xla(x, kernel, stride, padding)


def _out_size(size: int, k: int, s: int) -> int:
    return (size - k) // s + 1


def _pad(x: jax.Array, padding: Pair) -> jax.Array:
    if padding == (0, 0):
        return x
    (ph, pw) = padding
    return lax.pad(x, np.array(0, x.dtype), ((0, 0, 0), (ph, ph, 0), (pw, pw, 0), (0, 0, 0)))


def strided(x: jax.Array, axis: int, start: int, count: int, step: int) -> jax.Array:
    """``x[..., start : start + (count - 1) * step + 1 : step, ...]`` along ``axis``."""
    begin = [0] * x.ndim
    end = list(x.shape)
    strides = [1] * x.ndim
    begin[axis], end[axis], strides[axis] = start, start + (count - 1) * step + 1, step
    return lax.slice(x, begin, end, strides)


def use_shift(cin: int, kernel: Pair, cout: int) -> bool:
    """Whether the fast forward pass is :func:`_shift_conv` (XLA's CPU convolution is slow for
    one input channel)."""
    return cin == 1 and kernel[0] * kernel[1] * cout <= SHIFT_LIMIT


def patches_bytes(g_shape: tuple[int, ...], kernel: Pair, cin: int, dtype: jnp.dtype) -> int:
    """Bytes of the im2col matrix ``(N * oh * ow, kh * kw * C)`` of elements of ``dtype``, for
    an output gradient of shape ``g_shape`` ``(N, oh, ow, O)``."""
    n, oh, ow = g_shape[:3]
    return jnp.dtype(dtype).itemsize * n * oh * ow * kernel[0] * kernel[1] * cin


def use_patches(x_shape: tuple[int, ...], g_shape: tuple[int, ...],
                kernel_shape: tuple[int, ...], dtype: jnp.dtype) -> bool:
    """Kernel gradient as an im2col matrix product, or as a convolution?

    Measured on a 2-core CPU (float32): for wide layers (64+ output channels: AlexNet's,
    NiN's) the convolution is 3-6x slower than the matrix product even with an im2col matrix
    of several hundred MB; for narrow layers with a big matrix (VGG's first blocks at 224x224)
    building the matrix costs more than it saves.
    """
    limit = PATCHES_LIMIT_WIDE if kernel_shape[3] >= WIDE else PATCHES_LIMIT
    return patches_bytes(g_shape, kernel_shape[:2], x_shape[3], dtype) <= limit


def use_col2im(g_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: Pair,
               dtype: jnp.dtype) -> bool:
    """Input gradient as a matrix product and col2im (:func:`_col2im_input_grad`), or as XLA's
    convolution with the flipped kernel (:func:`_input_grad`)?

    Measured on a 2-core CPU (float32, whole LeNet training steps): 13-15% faster steps for
    LeNet and LeNet-BN, whose second layer (5x5, 6 -> 16 channels) XLA's convolution computes
    over a fully padded output gradient (twice the forward's multiply-adds) with 6 output
    channels; the same speed for VGG-11's (ratio 8) 3x3 16 -> 32 layer. Only narrow stride-1
    layers (wider ones build large matrices), and not 1x1 ones (XLA's convolution is already
    a matrix product there: NiN's 256-channel 1x1 layers measured slower as col2im)."""
    kh, kw, cin, _ = kernel_shape
    return (tuple(stride) == (1, 1) and kh * kw > 1 and kh * kw * cin <= COL2IM_WIDTH
            and patches_bytes(g_shape, (kh, kw), cin, dtype) <= PATCHES_LIMIT)


def _col2im_input_grad(g: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...],
                       padding: Pair) -> jax.Array:
    """The input gradient ``(N, H, W, C)`` of a stride-1 convolution: the gradient of every
    im2col entry, ``g @ kernel^T``, laid out tap by tap (``(kh, kw, N, oh, ow, C)``: each tap's
    block contiguous), then each tap's block added in place at its offset into the zero padded
    input, cropped. Low-precision inputs accumulate in float32, as XLA's convolution does.

    The taps-major layout matters on XLA's CPU backend: with the im2col layout ``(N, oh, ow,
    kh, kw, C)`` the sum of the taps is one loop of strided reads, 2-3x slower (LeNet's second
    layer at batch 256: 2.4 against 5-7 ms; whole LeNet steps 10-14% faster)."""
    n, oh, ow, cout = g.shape
    kh, kw, cin, _ = kernel.shape
    (ph, pw), (h, w) = padding, x_shape[1:3]
    acc = jnp.promote_types(g.dtype, jnp.float32)
    taps = jnp.einsum("mo,tco->tmc", g.reshape(n * oh * ow, cout),
                      kernel.reshape(kh * kw, cin, cout),
                      preferred_element_type=acc).reshape(kh, kw, n, oh, ow, cin)
    total = jnp.zeros((n, h + 2 * ph, w + 2 * pw, cin), acc)
    for i in range(kh):
        for j in range(kw):
            total = total.at[:, i:i + oh, j:j + ow, :].add(taps[i, j])
    return total[:, ph:ph + h, pw:pw + w].astype(g.dtype)


def _shift_conv(xp: jax.Array, kernel: jax.Array, stride: Pair) -> jax.Array:
    """A one-input-channel convolution of the padded ``xp`` as a sum of ``kh * kw`` scaled
    views: one elementwise loop for XLA."""
    kh, kw, _, _ = kernel.shape
    oh, ow = (_out_size(xp.shape[1 + a], kernel.shape[a], stride[a]) for a in range(2))
    out = None
    for i in range(kh):
        view = strided(xp, 1, i, oh, stride[0])
        for j in range(kw):
            term = strided(view, 2, j, ow, stride[1]) * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


def _patches_t(xp: jax.Array, kernel: Pair, stride: Pair, out: Pair) -> jax.Array:
    """The transposed im2col matrix of a padded NHWC input: ``(kh * kw * C, N * oh * ow)``,
    rows in HWI order (so ``patches_t @ g`` is an HWIO kernel gradient).

    Built from ``kh`` row views, then ``kw`` column views of those, of the channels-first
    input: stacks of contiguous copies along the leading axis (a concatenation of all views
    along the channels is several times slower on XLA's CPU backend).
    """
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out
    xt = jnp.transpose(xp, (3, 0, 1, 2)) if xp.shape[3] > 1 else xp.reshape(1, *xp.shape[:3])
    rows = jnp.stack([strided(xt, 2, i, oh, sh) for i in range(kh)])  # kh C N oh Wp
    cols = jnp.stack([strided(rows, 4, j, ow, sw) for j in range(kw)], axis=1)
    return cols.reshape(kh * kw * xp.shape[3], xp.shape[0] * oh * ow)


def _input_grad(g: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], stride: Pair,
                padding: Pair) -> jax.Array:
    """The input gradient ``(N, H, W, C)`` from the output gradient ``g`` ``(N, oh, ow, O)``:
    the convolution of ``g`` (dilated by the stride, padded) with the flipped kernel, which is
    materialised in HWIO (``(kh, kw, O, C)``) first. (Left to itself XLA may fold the flip and
    transpose into the convolution's dimension labels, e.g. inside a ``lax.scan``, and its CPU
    backend then runs a generic convolution 5x slower.)"""
    kh, kw = kernel.shape[:2]
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = g.shape[1:3]
    (flipped,) = materialize(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    pads = ((kh - 1 - ph, x_shape[1] - 1 - (oh - 1) * sh + ph),
            (kw - 1 - pw, x_shape[2] - 1 - (ow - 1) * sw + pw))
    return lax.conv_general_dilated(g, flipped, window_strides=(1, 1), padding=pads,
                                    lhs_dilation=stride, dimension_numbers=_DIMS)


def _kernel_grad(x: jax.Array, g: jax.Array, kernel: Pair, stride: Pair, padding: Pair
                 ) -> jax.Array:
    """The HWIO kernel gradient ``(kh, kw, C, O)`` as a convolution in the standard layouts:
    the padded input as ``(C, Hp, Wp, N)`` (channels as the batch, the batch as features) with
    the output gradient as an ``(oh, ow, N, O)`` kernel dilated by the stride. Both transposes
    are materialised (see :func:`_input_grad`)."""
    kh, kw = kernel
    xt, gt = materialize(jnp.transpose(_pad(x, padding), (3, 1, 2, 0)),
                         jnp.transpose(g, (1, 2, 0, 3)))
    dk = lax.conv_general_dilated(xt, gt, window_strides=(1, 1), padding=((0, 0), (0, 0)),
                                  rhs_dilation=stride, dimension_numbers=_DIMS)
    return jnp.transpose(dk[:, :kh, :kw, :], (1, 2, 0, 3))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d_cpu(x: jax.Array, kernel: jax.Array, stride: Pair, padding: Pair) -> jax.Array:
    """:func:`conv2d_xla`'s numbers in the forms XLA's CPU backend runs faster for small
    layers.

    Forward: a small one-channel convolution as a sum of shifted views (:func:`use_shift`),
    else XLA's. Kernel gradient: a matrix product of the transposed im2col matrix with the
    output gradient where that matrix is small enough (:func:`use_patches`), else a
    convolution in standard layouts (:func:`_kernel_grad`). Input gradient: a matrix product
    and col2im for narrow stride-1 layers (:func:`use_col2im`), else XLA's, with the flipped
    kernel laid out for the fast path (:func:`_input_grad`).
    """
    return _cpu_fwd(x, kernel, stride, padding)[0]


def _cpu_fwd(x: jax.Array, kernel: jax.Array, stride: Pair, padding: Pair
             ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    kh, kw, cin, cout = kernel.shape
    if use_shift(cin, (kh, kw), cout):
        # Materialised: XLA would otherwise recompute the kh * kw taps in every consumer.
        (y,) = materialize(_shift_conv(_pad(x, padding), kernel, stride))
    else:
        y = conv2d_xla(x, kernel, stride, padding)
    return y, (x, kernel)


def _cpu_bwd(stride: Pair, padding: Pair, res: tuple[jax.Array, jax.Array], g: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    kh, kw, _, cout = kernel.shape
    n, oh, ow, _ = g.shape
    if use_patches(x.shape, g.shape, kernel.shape, g.dtype):
        patches_t = _patches_t(_pad(x, padding), (kh, kw), stride, (oh, ow))
        dk = jnp.dot(patches_t, g.reshape(n * oh * ow, cout)).reshape(kernel.shape)
    else:
        dk = _kernel_grad(x, g, (kh, kw), stride, padding)
    if use_col2im(g.shape, kernel.shape, stride, g.dtype):
        return _col2im_input_grad(g, kernel, x.shape, padding), dk
    return _input_grad(g, kernel, x.shape, stride, padding), dk


conv2d_cpu.defvjp(_cpu_fwd, _cpu_bwd)
