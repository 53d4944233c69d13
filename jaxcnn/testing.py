"""The one tolerance rule of the parity checks, shared by tests and reports.

``max |actual - expected| <= rtol * max(1, max |expected|)``: absolute for values of order one
or less, relative to the reference's largest magnitude above that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_RTOL = 1e-5


def tolerance(expected: Any, rtol: float = DEFAULT_RTOL) -> float:
    """The allowed max abs difference for a reference tensor ``expected``."""
    e = np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    return rtol * max(1.0, scale)


def max_abs_diff(actual: Any, expected: Any) -> float:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"shape {a.shape} != reference shape {e.shape}")
    return float(np.max(np.abs(a - e))) if a.size else 0.0


def assert_close(actual: Any, expected: Any, what: str, rtol: float = DEFAULT_RTOL) -> float:
    """Assert the tolerance rule; the failure names ``what`` and both numbers. Returns the diff."""
    diff = max_abs_diff(actual, expected)
    tol = tolerance(expected, rtol)
    if not np.isfinite(diff) or diff > tol:
        raise AssertionError(f"{what}: max |diff| = {diff:.3e} > tolerance {tol:.3e} "
                             f"(rtol {rtol:g} x max(1, max|reference|))")
    return diff
