"""The tolerance rules of the parity checks, shared by tests and reports.

Values (outputs, losses, parameters, BatchNorm statistics):
``max |actual - expected| <= rtol * max(1, max |expected|)``.

Gradients (:func:`grad_scales`): each tensor on its own scale,
``max |actual - expected| <= rtol * max |expected|`` with no floor, so a 1e-4 gradient is held
to 1e-9 and not to 1e-5. A gradient that is zero in exact arithmetic (the bias of a layer right
before train-mode BatchNorm: the normalisation cancels it, and what is left is rounding noise)
has no scale of its own; it is judged against the model's largest gradient.

Float64 referee (:func:`referee_bound`): where float32 rounding decides (a ReLU input within
rounding of zero, a max-pool window whose two largest inputs are within rounding), a float64
value decides: jaxcnn must be at least nearly as close to it as torch float32 is to torch
float64, ``max |jax - ref| <= max(C * max |t32 - t64|, tol)``, with ``tol`` the rule above for
that tensor and ``C = REFEREE_C``. ``ref`` is torch float64, or (the parity suite's choice) a
float64 value computed on the branches jaxcnn's float32 run took.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

DEFAULT_RTOL = 1e-5

#: jaxcnn may be up to this factor further from the float64 referee than torch float32 is.
#: Two float32 computations of the same sum in different orders are each off the exact value by
#: about the same amount (independent rounding), so their errors' maxima over a tensor differ by
#: a factor close to 1; 2 leaves room for that spread, while an implementation error (a wrong
#: scale, a missing term, a misrouted gradient) shows at many times the rounding.
REFEREE_C = 2.0

#: A float64 gradient below this share of the model's largest one is zero in exact arithmetic
#: (float64 rounding noise is ~1e-16 relative; a real gradient this small would be below
#: float32 resolution anyway).
EXACT_ZERO = 1e-10


#: Elements per block of the float64 reductions below: a block's temporary stays in cache and is
#: reused, where a whole-tensor float64 temporary (AlexNet's 26M-element layer: 210 MB) costs
#: fresh memory pages on every call.
_BLOCK = 1 << 16


def _blocks(*arrays: np.ndarray) -> Any:
    """The arrays' elements as float64 blocks, in step (any layout, no whole-array copy)."""
    return np.nditer(list(arrays), flags=["external_loop", "buffered", "zerosize_ok"],
                     op_flags=[["readonly"]] * len(arrays),
                     op_dtypes=[np.float64] * len(arrays), casting="unsafe",
                     buffersize=_BLOCK)


def _max_of_blocks(blocks: Any, fn: Any) -> float:
    """``max`` over the blocks of ``fn(*block)`` (a float64 array); NaN if any is NaN."""
    top = 0.0
    for block in blocks:
        m = float(np.max(fn(*block) if blocks.nop > 1 else fn(block)))
        if m != m:
            return m
        top = max(top, m)
    return top


def _max_abs(x: Any) -> float:
    """``max |x|`` (0 for an empty array); exact: |x| and max lose nothing in float64."""
    return _max_of_blocks(_blocks(np.asarray(x)), np.abs)


def tolerance(expected: Any, rtol: float = DEFAULT_RTOL, scale: float | None = None) -> float:
    """The allowed max abs difference for a reference tensor ``expected``: ``rtol * scale``,
    where ``scale`` defaults to the values rule's ``max(1, max |expected|)``."""
    if scale is None:
        scale = max(1.0, _max_abs(expected))
    return rtol * scale


def grad_scales(grads: Mapping[str, Any]) -> dict[str, float]:
    """The scale of each gradient tensor (name -> array, ideally the float64 referee's): its own
    ``max |g|``, or the model's largest ``max |g|`` where it is zero in exact arithmetic
    (below ``EXACT_ZERO`` of that)."""
    own = {k: _max_abs(g) for k, g in grads.items()}
    top = max(own.values(), default=0.0)
    return {k: (s if s > EXACT_ZERO * top else top) for k, s in own.items()}


def max_abs_diff(actual: Any, expected: Any) -> float:
    """``max |actual - expected|``, computed in float64 block by block (0 for empty arrays)."""
    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape:
        raise AssertionError(f"shape {a.shape} != reference shape {e.shape}")

    def absdiff(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        d = np.subtract(x, y)
        return np.abs(d, out=d)

    return _max_of_blocks(_blocks(a, e), absdiff)


def assert_close(actual: Any, expected: Any, what: str, rtol: float = DEFAULT_RTOL,
                 scale: float | None = None) -> float:
    """Assert the tolerance rule; the failure names ``what`` and both numbers. Returns the diff.
    ``scale``: see :func:`tolerance` (pass the gradient's from :func:`grad_scales`)."""
    diff = max_abs_diff(actual, expected)
    tol = tolerance(expected, rtol, scale)
    if not np.isfinite(diff) or diff > tol:
        how = "max(1, max|reference|)" if scale is None else f"scale {scale:.3e}"
        raise AssertionError(f"{what}: max |diff| = {diff:.3e} > tolerance {tol:.3e} "
                             f"(rtol {rtol:g} x {how})")
    return diff


def referee_bound(jax_value: Any, torch32: Any, torch64: Any, tol: float,
                  c: float = REFEREE_C, reference: Any = None) -> tuple[float, float]:
    """``(max |jax - reference|, bound)`` with ``bound = max(c * max |t32 - t64|, tol)``;
    ``reference`` defaults to ``torch64``."""
    ref = torch64 if reference is None else reference
    return max_abs_diff(jax_value, ref), max(c * max_abs_diff(torch32, torch64), tol)


def assert_referee(jax_value: Any, torch32: Any, torch64: Any, what: str, tol: float,
                   c: float = REFEREE_C, reference: Any = None) -> tuple[float, float]:
    """Assert ``max |jax - reference| <= max(c * max |t32 - t64|, tol)`` (``reference``:
    ``torch64`` unless given, e.g. a float64 value on float32's branches); returns
    ``(diff, bound)``."""
    diff, bound = referee_bound(jax_value, torch32, torch64, tol, c, reference)
    if not np.isfinite(diff) or diff > bound:
        gap = max_abs_diff(torch32, torch64)
        ref = "torch64" if reference is None else "float64 referee"
        raise AssertionError(
            f"{what}: max |jax - {ref}| = {diff:.3e} > bound {bound:.3e} = max({c:g} x "
            f"max |torch32 - torch64| = {c:g} x {gap:.3e}, tolerance {tol:.3e})")
    return diff, bound
