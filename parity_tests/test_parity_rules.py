"""The torch-free rules of the parity report (:mod:`torch_ref.crosscheck.parity`):
configuration dicts, the tie rule, the comparison rule and the report's rendering."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxcnn.layers import BatchNorm, BatchNorm2d, Conv2d
from jaxcnn.testing import max_abs_diff, tolerance
from torch_ref.crosscheck.parity import (
    TIE_NOTE,
    ConfigMismatch,
    LayerRow,
    ParityReport,
    compare,
    explained_by_ties,
    jax_layer_config,
)


def test_batchnorm_momentum_is_compared_as_one_update_rule() -> None:
    book = jax_layer_config(BatchNorm(6, num_dims=4))  # momentum 0.9, the book's convention
    torch_bn = jax_layer_config(BatchNorm2d(6))  # momentum 0.1, torch's convention
    rule = "[running = 0.9*running + 0.1*batch]"
    assert torch_bn["momentum"] == f"0.1 {rule}"
    assert book["momentum"] == "0.9 [moving = 0.9*moving + 0.1*batch]"
    wrong = jax_layer_config(BatchNorm2d(6, momentum=0.9))
    assert wrong["momentum"] == "0.9 [running = 0.1*running + 0.9*batch]"
    assert jax_layer_config(Conv2d(1, 6, 5, padding=2))["padding"] == (2, 2)


def test_tie_rule() -> None:
    value = np.array([[0.0, 0.0], [0.0, 2.0]])
    g_torch = np.array([[1.0, 0.0], [0.0, 3.0]])
    moved = np.array([[0.0, 1.0], [0.0, 3.0]])  # the tie at 0 routed to another zero
    assert explained_by_ties(value, value, g_torch, moved, tol=1e-5)
    wrong = np.array([[1.0, 0.0], [0.0, 2.5]])  # differs where the value is 2
    assert not explained_by_ties(value, value, g_torch, wrong, tol=1e-5)
    assert not explained_by_ties(value - 1, value - 1, g_torch, moved, tol=1e-5)  # not a ReLU
    assert not explained_by_ties(value, value, g_torch, g_torch, tol=1e-5)  # nothing differs


def test_compare_uses_the_testing_rule() -> None:
    e = np.array([0.0, 3.0, -4.0])
    a = e + np.array([0.0, 2e-5, 0.0])
    d = compare(a, e)
    assert d.max_abs == pytest.approx(max_abs_diff(a, e))
    assert d.tol == tolerance(e) == pytest.approx(4e-5)
    assert d.max_rel == pytest.approx(2e-5 / 4) and d.ok
    assert not compare(a + 1e-3, e).ok
    bad = compare(np.zeros(2), e)
    assert math.isinf(bad.max_abs) and not bad.ok


def _report(rows: list[LayerRow]) -> ParityReport:
    return ParityReport("lenet", {"num_classes": 10}, True, True, 2, 0, (2, 1, 28, 28),
                        "w", 1e-5, rows=rows, precision={"dtype": "float32"})


def test_report_marks_the_first_failure_and_serialises() -> None:
    ok, over = compare(np.ones(3), np.ones(3)), compare(np.ones(3) * 2, np.ones(3))
    rows = [LayerRow("conv.0", "Conv2d", (2, 6, 24, 24), activation=ok),
            LayerRow("conv.1", "Sigmoid", (2, 6, 24, 24), activation=over, status="over"),
            LayerRow("conv.2", "MaxPool2d", (2, 6, 12, 12), activation=over, status="over")]
    report = _report(rows)
    report.mismatches = [ConfigMismatch("conv.1", "padding", (0, 0), (1, 1))]
    text = str(report)
    assert not report.ok and report.first_failure is rows[1]
    assert [ln.split()[1] for ln in text.splitlines() if ln.startswith(">>")] == ["conv.1:",
                                                                                  "conv.1"]
    assert "conv.1: padding: torch (0, 0) vs jaxcnn (1, 1)" in text
    assert text.splitlines()[-1].startswith("result: FAIL, first configuration mismatch at")
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["first_failure"] == "conv.1" and data["ok"] is False
    assert [r["status"] for r in data["rows"]] == ["ok", "over", "over"]


def test_report_explains_ties_without_failing() -> None:
    ok = compare(np.ones(3), np.ones(3))
    report = _report([LayerRow("conv.1", "ReLU", (2, 3), activation=ok, grad_out=ok,
                               grad_in=ok, status="tie")])
    assert report.ok
    assert f"tie: {TIE_NOTE}" in " ".join(line.strip() for line in str(report).splitlines())
    assert str(report).splitlines()[-1] == "result: OK, every layer within tolerance"


@pytest.mark.parametrize(("actual", "expected", "diff"), [
    (np.float32([1.0, 2.0]), np.float64([1.0, 2.5]), 0.5),
    (np.float32([1.0 + 2**-23]), np.float32([1.0]), 2.0**-23),  # float32's last bit, kept
    (np.float32([1.0]), np.float64([1.0 + 2**-40]), 2.0**-40),  # below float32's resolution
    (np.float32(1.0) + np.float32(1e-8), np.float64(1.0), 0.0),  # 0-d; 1e-8 rounds away
    (np.int64([1, 2]), np.float32([1.5, 2.0]), 0.5),
    (np.array([True, False]), np.array([0, 0]), 1.0),
    (np.array([[1.0]], dtype="bfloat16"), np.float32([[1.25]]), 0.25),
    (np.float32([1.0, np.nan]), np.float32([1.0, 1.0]), np.nan),
    (np.zeros((0, 3), np.float32), np.zeros((0, 3)), 0.0),
])
def test_max_abs_diff_is_float64_exact(actual: np.ndarray, expected: np.ndarray,
                                        diff: float) -> None:
    """``max_abs_diff`` (no float64 copies of its inputs) against the plain float64
    computation, over dtypes, 0-d, empty and NaN inputs; ``tolerance``'s scale likewise."""
    got = max_abs_diff(actual, expected)
    plain = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))
    assert (np.isnan(got) and np.isnan(diff)) or got == diff == (plain.max() if plain.size
                                                                 else 0.0)
    if np.size(expected):
        assert tolerance(expected) == 1e-5 * max(1.0, float(np.max(np.abs(
            np.asarray(expected, np.float64)))))
    with pytest.raises(AssertionError, match="shape"):
        max_abs_diff(np.zeros(2), np.zeros(3))
