"""The parity report's data, comparison rule and rendering (numpy only, no torch).

Every comparison uses :mod:`jaxcnn.testing`'s rule: ``max|jaxcnn - torch| <= rtol *
max(1, max|torch|)``. The relative column is ``max|diff| / max|torch|``.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from typing import Any

import numpy as np

from jaxcnn.testing import DEFAULT_RTOL, max_abs_diff, tolerance

from ._config import ConfigMismatch

FAILING = ("over", "shape", "missing", "error")
TIE_NOTE = ("max-pool tie at 0: given the same input and cotangent, the two max-pool backwards "
            "differ only at zeros of a ReLU output, where torch and XLA route a tied maximum to "
            "different positions; ReLU passes no gradient there, so nothing upstream changes")
DRIFT_NOTE = ("the end-to-end gradients differ from {where} back, yet every layer's own "
              "backward agrees (local bwd): a forward value there lies within rounding of a "
              "kink (a ReLU input at 0, a max-pool near-tie) and the two frameworks took "
              "different sides of it; the parameter gradients inherit the difference")

GRAPH_NOTE = ("graph rows: an Inception, Residual or DenseBlock row is the module's output (the "
              "concat; relu(Y + X), the residual sum; the last concat); name[pK] is Inception path "
              "K's output (its channels of the concat), name[catK] a DenseBlock's K-th concat")
GRAPH_TYPES = ("Inception", "Residual", "DenseBlock", "path", "concat")


@dataclasses.dataclass(frozen=True)
class Diff:
    """One comparison: ``max_abs`` = max|jaxcnn - torch|, ``max_rel`` = max_abs / max|torch|,
    ``tol`` from :func:`jaxcnn.testing.tolerance`; non-finite values mean a shape mismatch."""

    max_abs: float
    max_rel: float
    tol: float

    @property
    def ok(self) -> bool:
        return math.isfinite(self.max_abs) and self.max_abs <= self.tol


def compare(actual: Any, expected: Any, rtol: float = DEFAULT_RTOL) -> Diff:
    """Compare ``actual`` (jaxcnn) with ``expected`` (torch); a shape mismatch gives inf."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    tol = tolerance(e, rtol)
    if a.shape != e.shape:
        return Diff(math.inf, math.inf, tol)
    d = max_abs_diff(a, e)
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    rel = d / scale if scale > 0 else (0.0 if d == 0 else math.inf)
    return Diff(d, rel, tol)


def worst(diffs: list[Diff]) -> Diff | None:
    """The diff furthest over (or closest to) its tolerance."""
    if not diffs:
        return None
    return max(diffs, key=lambda d: math.inf if not math.isfinite(d.max_abs)
               else d.max_abs / d.tol if d.tol > 0 else math.inf)


def explained_by_ties(value_t: np.ndarray, value_j: np.ndarray, grad_t: np.ndarray,
                      grad_j: np.ndarray, tol: float) -> bool:
    """Whether two cotangents of a non-negative activation (a ReLU output) differ only where
    that activation is exactly 0 on both sides: the signature of a max-pool window of zeros
    whose gradient torch and XLA route to different (equally valid) positions."""
    vt, vj = np.asarray(value_t), np.asarray(value_j)
    gt, gj = np.asarray(grad_t, np.float64), np.asarray(grad_j, np.float64)
    if not (vt.shape == vj.shape == gt.shape == gj.shape) or vt.size == 0:
        return False
    bad = np.abs(gj - gt) > tol
    if not bad.any() or vt.min() < 0 or vj.min() < 0:
        return False
    return bool(np.all(vt[bad] == 0) and np.all(vj[bad] == 0))


@dataclasses.dataclass
class LayerRow:
    """One leaf module in torch's execution order.

    ``activation`` compares its outputs; ``buffers`` its updated BatchNorm statistics (train
    mode). With ``--grad``: ``grad_out`` / ``grad_in`` compare the end-to-end cotangents of its
    output / input for the loss, and ``local`` the layer's own backward: jaxcnn's layer alone,
    fed torch's input and output cotangent, against torch's input cotangent and parameter
    gradients. ``status``: ok; drift (end-to-end gradients differ but ``local`` agrees, see
    :data:`DRIFT_NOTE`); tie (see :data:`TIE_NOTE`); over; shape; missing (not run on one
    side) or error (raised in jaxcnn). Only over, shape, missing and error fail.
    """

    name: str
    type: str
    shape: tuple[int, ...] | None
    jax_shape: tuple[int, ...] | None = None
    activation: Diff | None = None
    buffers: Diff | None = None
    grad_out: Diff | None = None
    grad_in: Diff | None = None
    local: Diff | None = None
    status: str = "ok"
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status in FAILING


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return "inf" if not math.isfinite(v) else f"{v:.2e}"


def _frac(d: Diff | None) -> str:
    """``max_abs / tol``: the share of the tolerance used."""
    if d is None:
        return "-"
    if not math.isfinite(d.max_abs):
        return "inf"
    return f"{d.max_abs / d.tol:.2g}" if d.tol > 0 else ("0" if d.max_abs == 0 else "inf")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


@dataclasses.dataclass
class ParityReport:
    """The result of :func:`~torch_ref.crosscheck.parity.parity_report`; ``str()`` is the
    CLI's table."""

    model: str
    config: dict[str, Any]
    train: bool
    grad: bool
    batch: int
    seed: int
    input_shape: tuple[int, ...]
    weights: str
    rtol: float
    objective: str = "mean cross-entropy"
    modules_compared: int = 0
    mismatches: list[ConfigMismatch] = dataclasses.field(default_factory=list)
    rows: list[LayerRow] = dataclasses.field(default_factory=list)
    param_grads: dict[str, Diff] = dataclasses.field(default_factory=dict)
    loss: tuple[float, float] | None = None
    error: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    precision: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def first_failure(self) -> LayerRow | None:
        return next((r for r in self.rows if r.failed), None)

    @property
    def drift_from(self) -> LayerRow | None:
        """The last layer (forward order) where the end-to-end gradients start to differ."""
        drifting = [r for r in self.rows if r.status == "drift"]
        starts = [r for r in drifting if r.grad_out is not None and r.grad_out.ok]
        return (starts or drifting)[-1] if drifting else None

    @property
    def ok(self) -> bool:
        """No configuration mismatch, no jaxcnn error and no failing row. End-to-end parameter
        gradients are informative: each layer's own are checked in its ``local`` column."""
        return not self.mismatches and self.error is None and self.first_failure is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite numbers become None."""
        first = self.first_failure
        return _jsonable({
            "model": self.model, "config": self.config, "train": self.train, "grad": self.grad,
            "batch": self.batch, "seed": self.seed, "input_shape": list(self.input_shape),
            "weights": self.weights, "rtol": self.rtol, "objective": self.objective,
            "ok": self.ok,
            "configuration": {
                "modules_compared": self.modules_compared,
                "mismatches": [dataclasses.asdict(m) | {"torch": repr(m.torch),
                                                        "jaxcnn": repr(m.jaxcnn)}
                               for m in self.mismatches],
            },
            "first_failure": first.name if first else None,
            "rows": [dataclasses.asdict(r) | {"failed": r.failed} for r in self.rows],
            "param_grads": {k: dataclasses.asdict(d) | {"ok": d.ok}
                            for k, d in self.param_grads.items()},
            "loss": list(self.loss) if self.loss else None,
            "error": self.error, "warnings": self.warnings, "precision": self.precision,
        })

    def _table(self) -> list[str]:
        head = ["", "name", "type", "output shape", "max abs", "max rel", "tol"]
        if self.train:
            head.append("buffers")
        if self.grad:
            head += ["grad out", "grad in", "local bwd"]
        head.append("status")
        first = self.first_failure
        body = []
        for r in self.rows:
            act = r.activation
            line = [">>" if r is first else "", r.name, r.type,
                    str(r.shape) if r.shape is not None else "-",
                    _num(act.max_abs if act else None), _num(act.max_rel if act else None),
                    _num(act.tol if act else None)]
            if self.train:
                line.append(_frac(r.buffers))
            if self.grad:
                line += [_frac(d) for d in (r.grad_out, r.grad_in, r.local)]
            line.append(r.status + (f" ({r.note})" if r.note and r.status != "tie" else ""))
            body.append(line)
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
        return ["  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip()
                for x in [head, *body]]

    def __str__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        mode = "train" if self.train else "eval"
        lines = textwrap.wrap(
            f"parity: {self.model}({cfg}), torch_ref vs jaxcnn, {mode} mode, batch {self.batch}, "
            f"seed {self.seed}, input {self.input_shape} (NCHW; NHWC for jaxcnn)", 100,
            subsequent_indent="  ")
        lines.append(f"weights: {self.weights}")
        for w in self.warnings:
            lines += textwrap.wrap(f"warning: {w}", 100, subsequent_indent="  ")
        lines.append("")
        if self.mismatches:
            lines.append(f"configuration: {len(self.mismatches)} mismatch(es) in "
                         f"{self.modules_compared} modules")
            lines += [f"{'>>' if i == 0 else '  '} {m}" for i, m in enumerate(self.mismatches)]
        else:
            lines.append(f"configuration: {self.modules_compared} modules, hyper-parameters "
                         "identical")
        lines.append("")
        if self.rows:
            lines.append(f"layer by layer (tol = {self.rtol:g} * max(1, max|torch|), the rule of "
                         "jaxcnn.testing):")
            lines.append("  max abs = max|jaxcnn - torch| of the output; max rel = max abs / "
                         "max|torch|")
            if self.train or self.grad:
                lines.append("  " + ", ".join((["buffers"] if self.train else []) + (
                    ["grad out", "grad in", "local bwd"] if self.grad else []))
                    + ": max abs diff / its tol (over 1 is over tolerance)")
            if self.train:
                lines.append("  buffers: the BatchNorm statistics after the forward")
            if self.grad:
                lines += textwrap.wrap(
                    "grad out/in: end-to-end cotangents of the layer's output/input for the "
                    f"{self.objective}", 100, initial_indent="  ", subsequent_indent="    ")
                lines.append("  local bwd: the layer alone on torch's input and output cotangent "
                             "(input cotangent, params)")
            lines += self._table()
        if any(r.type in GRAPH_TYPES for r in self.rows):
            lines += textwrap.wrap(GRAPH_NOTE, 100, subsequent_indent="  ")
        if any(r.status == "tie" for r in self.rows):
            lines += textwrap.wrap(f"tie: {TIE_NOTE}", 100, subsequent_indent="  ")
        drift = self.drift_from
        if drift is not None:
            lines += textwrap.wrap("drift: " + DRIFT_NOTE.format(
                where=f"{drift.name} ({drift.type})"), 100, subsequent_indent="  ")
        if self.error:
            lines.append(f"error: {self.error}")
        if self.param_grads:
            bad = [k for k, d in self.param_grads.items() if not d.ok]
            w = worst(list(self.param_grads.values()))
            lines += textwrap.wrap(
                f"parameter gradients, end to end: {len(self.param_grads)} tensors, "
                + (f"differ: {', '.join(bad)}" if bad else
                   f"all within tolerance (worst max abs {_num(w.max_abs if w else 0)})"),
                100, subsequent_indent="  ")
        if self.loss:
            lines.append(f"loss: torch {self.loss[0]:.6f}, jaxcnn {self.loss[1]:.6f}")
        lines += textwrap.wrap("precision: " + ", ".join(
            f"{k}={v}" for k, v in self.precision.items()), 100, subsequent_indent="  ")
        first = self.first_failure
        if self.ok:
            lines.append("result: OK, every layer within tolerance"
                         + (" (gradients drift end to end, see above)" if drift else ""))
        else:
            why = []
            if self.mismatches:
                where = self.mismatches[0].name or "<model>"
                why.append(f"first configuration mismatch at {where}")
            if first:
                why.append(f"first layer over tolerance: {first.name} ({first.type})")
            if self.error and not first:
                why.append("jaxcnn failed")
            lines.append("result: FAIL, " + "; ".join(why))
        return "\n".join(lines)
