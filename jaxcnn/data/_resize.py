"""``preprocess``: torchvision's ``Resize`` (PIL bilinear on uint8) + ``ToTensor`` in jax.numpy.

Pillow's 8-bit resampler (``libImaging/Resample.c``) runs a horizontal pass, then a vertical
one. Each output pixel is ``clip((sum_k pixel * coeff_k + 2**21) >> 22, 0, 255)``: the filter
coefficients are normalised in double precision and rounded to 22-bit fixed point, and the
intermediate image is stored as uint8. The taps below are computed with the same double
arithmetic, and both passes run in exact int32 arithmetic, so the result is bit-identical.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_PRECISION_BITS = 32 - 8 - 2  # Pillow's PRECISION_BITS for 8-bit images
# ToTensor's float32 ``v / 255`` for every uint8 v, correctly rounded. A lookup instead of a
# division because XLA lowers float division to a reciprocal multiply (1 ulp off for 126 values).
_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


@functools.cache
def pil_bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear taps for resizing one axis from ``in_size`` to ``out_size``.

    Returns ``(index, weight)``, both int32 ``(out_size, ksize)``: output ``i`` is
    ``sum_k input[index[i, k]] * weight[i, k]`` in 22-bit fixed point (unused taps: weight 0).
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear filter's support is 1
    ksize = math.ceil(support) * 2 + 1
    index = np.zeros((out_size, ksize), np.int32)
    weight = np.zeros((out_size, ksize), np.int32)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward 0, as C does
        xmax = min(int(center + support + 0.5), in_size) - xmin
        taps = [_bilinear((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        total = 0.0
        for tap in taps:  # sequential double sum, as in C (Python 3.12's sum() compensates)
            total += tap
        for x, tap in enumerate(taps):
            k = tap / total if total != 0.0 else tap
            scaled = k * (1 << _PRECISION_BITS)
            weight[xx, x] = int(scaled - 0.5) if k < 0 else int(scaled + 0.5)
            index[xx, x] = xmin + x
        index[xx, xmax:] = xmin
    return index, weight


def _resample_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    """One Pillow 8-bit pass along ``axis`` (>= 0) of an int32 array of values in [0, 255]."""
    index, weight = pil_bilinear_taps(x.shape[axis], out_size)
    gathered = jnp.take(x, jnp.asarray(index), axis=axis)  # axis -> (out_size, ksize)
    w = jnp.asarray(weight).reshape(weight.shape + (1,) * (x.ndim - 1 - axis))
    acc = jnp.sum(gathered * w, axis=axis + 1) + (1 << (_PRECISION_BITS - 1))
    return jnp.clip(jnp.right_shift(acc, _PRECISION_BITS), 0, 255)


def pil_resize(images: jax.Array, size: int) -> jax.Array:
    """uint8 ``(..., H, W)`` -> uint8 ``(..., size, size)``, exactly as PIL's
    ``Image.resize((size, size), BILINEAR)`` on each mode-"L" image."""
    x = images.astype(jnp.int32)
    if x.shape[-1] != size:
        x = _resample_axis(x, x.ndim - 1, size)  # horizontal pass first, as Pillow
    if x.shape[-2] != size:
        x = _resample_axis(x, x.ndim - 2, size)
    return x.astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames="resize")
def preprocess(images: jax.Array, resize: int | None = None) -> jax.Array:
    """uint8 ``(N, 28, 28)`` -> float32 NHWC ``(N, S, S, 1)`` in [0, 1].

    Equals torchvision's ``ToTensor()`` (``/ 255``), preceded by ``Resize(resize)`` on the
    PIL image when ``resize`` is given (``S = resize``; square images only). Jit-compatible:
    ``resize`` is static.
    """
    if images.dtype != jnp.uint8:
        raise TypeError(f"preprocess expects uint8 images, got {images.dtype}")
    if images.ndim != 3:
        raise ValueError(f"preprocess expects (N, H, W) images, got shape {images.shape}")
    if resize is not None:
        if images.shape[1] != images.shape[2]:
            raise ValueError(f"resize needs square images, got {images.shape[1:]}")
        images = pil_resize(images, resize)
    return jnp.take(jnp.asarray(_TO_UNIT), images.astype(jnp.int32), axis=0)[..., None]
