"""jaxcnn in float64, and in float64 on float32's branches: the referee of the gradient checks.

ReLU and max pooling are piecewise: a ReLU input within float32 rounding of zero, or a pooling
window whose two largest inputs are within rounding of each other, takes its branch (gradient
passed or not, routed to one element or another) by the rounding of the framework that
computes it. Such an input flips branches between float32 and float64 in one framework and not
the other, and the float32 gradients then differ by a kink, not by rounding.

The referee therefore has two links:

1. jaxcnn in float64 against torch in float64 (:data:`EXACT_RTOL` of each gradient's own
   scale): the same function in near-exact arithmetic, where no input of practical size sits
   on a kink; any implementation error (a scale, a missing term, a misrouted gradient) shows
   at many orders of magnitude above the bound.
2. jaxcnn in float32 against jaxcnn in float64 *on float32's branches*: every ReLU mask and
   every max-pool pick taken from jaxcnn's own float32 forward (recorded in the jitted float32
   step), the rest computed in float64. Without a flip that is link 1's function; with one it
   is the float64 value of the branch that float32 took, so what is left is rounding, judged
   by ``jaxcnn.testing.assert_referee`` against torch float32's own distance from float64.

Recording and forcing patch ``jax.nn.relu`` (every ReLU of the models: the ``ReLU`` layer's and
the functional ones in ``Residual`` and ``Inception``) and the ``max_pool2d`` that
``jaxcnn.layers.pool.MaxPool2d`` calls, while the function is traced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

import jaxcnn.layers.pool as pool_layer
from jaxcnn.ops import pool as pool_ops

#: Link 1's bound: jaxcnn float64 vs torch float64, relative to each gradient's own scale
#: (measured: up to 2e-15 on every model; float64's rounding is ~1e-16).
EXACT_RTOL = 1e-10

#: XLA options of the float64 referee's programs (the float32 ones, what jaxcnn runs, keep
#: XLA's defaults): LLVM at optimisation level 1 compiles them faster and runs them as fast
#: (GoogLeNet's float64 train step compiles in 16.7 s at the default level, 11.2 s at 1; at 0
#: in 7.2 s, but ResNet-18's then runs 4x slower); its rounding differs from the default
#: build's by float64's ~1e-16, eight orders below the referee's bounds.
REFEREE_COMPILER_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 1}

Pair = tuple[int, int]
Pads = tuple[tuple[int, int], tuple[int, int]]


def _windows(x: jax.Array, kernel: Pair, stride: Pair, pads: Pads) -> jax.Array:
    """``(N, oh, ow, kh * kw, C)``: every pooling window of the ``-inf``-padded input, in
    ATen's scan order (``jaxcnn.ops.pool``'s gradient's own gather)."""
    xp = pool_ops._pad_input(x, pads)
    n, hp, wp, c = xp.shape
    pos = pool_ops._window_positions(hp, wp, kernel, stride,
                                     pool_ops._out_sizes(xp.shape, kernel, stride))
    return xp.reshape(n, hp * wp, c)[:, pos, :]


def pool_picks(x: jax.Array, kernel: Pair, stride: Pair, pads: Pads) -> jax.Array:
    """Each window's pick ``(N, oh, ow, C)``: the first maximum in scan order (torch's and
    jaxcnn's choice; the inputs here are finite)."""
    w = _windows(x, kernel, stride, pads)
    return jnp.argmax(w == jnp.max(w, axis=3, keepdims=True), axis=3)


@contextlib.contextmanager
def recording(relus: list[jax.Array], pools: list[jax.Array]) -> Iterator[None]:
    """While tracing: append every ReLU input to ``relus`` and every max-pool pick to
    ``pools`` (in call order)."""
    relu, max_pool = jax.nn.relu, pool_layer.max_pool2d

    def recording_relu(a: jax.Array) -> jax.Array:
        relus.append(a)
        return relu(a)

    def recording_pool(x: jax.Array, kernel: Pair, stride: Pair, pads: Pads) -> jax.Array:
        pools.append(pool_picks(x, kernel, stride, pads))
        return max_pool(x, kernel, stride, pads)

    with mock.patch.object(jax.nn, "relu", recording_relu), \
            mock.patch.object(pool_layer, "max_pool2d", recording_pool):
        yield


@contextlib.contextmanager
def forcing(relu_masks: list[jax.Array], picks: list[jax.Array]) -> Iterator[None]:
    """While tracing: the i-th ReLU passes exactly where ``relu_masks[i]`` is true, the i-th
    max pooling takes the elements ``picks[i]`` (in call order; all must be used)."""
    masks_it, picks_it = iter(relu_masks), iter(picks)

    def forced_relu(a: jax.Array) -> jax.Array:
        return jnp.where(next(masks_it), a, jnp.zeros_like(a))

    def forced_pool(x: jax.Array, kernel: Pair, stride: Pair, pads: Pads) -> jax.Array:
        w = _windows(x, kernel, stride, pads)
        return jnp.take_along_axis(w, next(picks_it)[:, :, :, None, :], axis=3)[:, :, :, 0, :]

    with mock.patch.object(jax.nn, "relu", forced_relu), \
            mock.patch.object(pool_layer, "max_pool2d", forced_pool):
        yield
    assert next(masks_it, None) is None and next(picks_it, None) is None, "unused branches"


def to_float64(tree: Any) -> Any:
    """Every floating leaf as a float64 numpy array (others unchanged)."""
    return jax.tree.map(lambda a: np.asarray(a, np.float64)
                        if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a),
                        tree)


def branches(loss_fn: Callable[..., Any], compiler_options: dict[str, Any] | None = None
             ) -> Callable[..., tuple[Any, list, list]]:
    """Jitted ``(params, *args) -> ((loss, aux, grads), ReLU masks, max-pool picks)`` for
    ``loss_fn(params, *args) -> (loss, aux)``: its value and gradient, and the branches its
    forward took. ``compiler_options``: XLA's, for the float64 referee's programs
    (:data:`REFEREE_COMPILER_OPTIONS`)."""

    def run(params: Any, *args: Any) -> tuple[Any, list, list]:
        def inner(p: Any) -> Any:
            relus: list[jax.Array] = []
            pools: list[jax.Array] = []
            with recording(relus, pools):
                loss, aux = loss_fn(p, *args)
            return loss, (aux, [jax.lax.stop_gradient(a) > 0 for a in relus], pools)

        (loss, (aux, masks, picks)), g = jax.value_and_grad(inner, has_aux=True)(params)
        return (loss, aux, g), masks, picks

    return jax.jit(run, compiler_options=compiler_options)


def on_branches(loss_fn: Callable[..., Any], compiler_options: dict[str, Any] | None = None
                ) -> Callable[..., Any]:
    """Jitted ``(relu_masks, picks, params, *args) -> (loss, aux, grads)`` with those branches
    forced (``compiler_options``: see :func:`branches`)."""

    def run(relu_masks: list, picks: list, params: Any, *args: Any) -> Any:
        def inner(p: Any) -> Any:
            with forcing(relu_masks, picks):
                return loss_fn(p, *args)

        (loss, aux), g = jax.value_and_grad(inner, has_aux=True)(params)
        return loss, aux, g

    return jax.jit(run, compiler_options=compiler_options)


def flips(masks_a: list, picks_a: list, masks_b: list, picks_b: list) -> tuple[int, int]:
    """``(ReLU elements, pooling windows)`` whose branch differs between two runs."""
    assert len(masks_a) == len(masks_b) and len(picks_a) == len(picks_b)
    relu = sum(int(np.sum(np.asarray(a) != np.asarray(b)))
               for a, b in zip(masks_a, masks_b, strict=True))
    pool = sum(int(np.sum(np.asarray(a) != np.asarray(b)))
               for a, b in zip(picks_a, picks_b, strict=True))
    return relu, pool


def float64_referee(fns: tuple[Any, Any, Any], args32: tuple
                    ) -> tuple[Any, Any, Any, tuple[int, int]]:
    """``fns``: ``branches``, ``branches`` and ``on_branches`` of one loss function (the second
    used in float64). Returns ``(float32, float64, float64 on float32's branches)`` results
    ``(loss, aux, grads)`` for ``args32`` (``(params, *args)``) and the flips."""
    grads32, grads64, forced64 = fns
    out32, masks32, picks32 = grads32(*args32)
    with jax.enable_x64(True):
        args64 = to_float64(args32)
        out64, masks64, picks64 = grads64(*args64)
        n = flips(masks32, picks32, masks64, picks64)
        same = out64 if n == (0, 0) else forced64(masks32, picks32, *args64)
        out64, same = jax.device_get((out64, same))
    return jax.device_get(out32), out64, same, n
