"""The layer-by-layer parity report on every registered model and test case, and on models
with a planted mistake: the report must name the planted layer first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import jaxcnn
import torch_ref
from jaxcnn.cli import main
from jaxcnn.convert import save_safetensors
from jaxcnn.inspect import get_module, replace_module, torch_type
from jaxcnn.layers import MaxPool2d, ReLU
from jaxcnn.registry import get_spec
from torch_ref.crosscheck.parity import (
    JaxRun,
    LayerRow,
    ParityReport,
    RowContext,
    compare_row,
    parity_report,
)

from ._cases import TEST_CONFIGS

# The graph models (googlenet, resnet18, densenet) have their own, combined tests in
# test_parity_graph.py: rows in call order with merge points, and planted errors in a branch;
# they are large for a 2-core CPU, so each runs one train+grad report and one planted report.
GRAPH_MODELS = ("googlenet", "resnet18", "densenet")
CASES = [pytest.param(name, cfg, size, id=f"{name}-{i}")
         for name in jaxcnn.list_models() if name not in GRAPH_MODELS
         for i, (cfg, size) in enumerate(TEST_CONFIGS[name])]
BN_CASES = [p for p in CASES if p.values[0] == "lenet_bn"]



def _batch(size: int) -> int | None:
    return 1 if size > 64 else None  # the 224-pixel models with batch 1; else the default


def _leaves(name: str, cfg: dict) -> list[str]:
    with torch.device("meta"):
        tm = torch_ref.create_model(name, **cfg)
    return [n for n, m in tm.named_modules() if n and next(m.children(), None) is None]


def _trained_looking_weights(path: Path, name: str, cfg: dict) -> Path | None:
    """A weights file whose BatchNorm statistics look trained (the book's BatchNorm starts with
    a moving variance of 0, which makes eval mode divide by sqrt(eps)); None without BN."""
    torch.manual_seed(1)
    tm = torch_ref.create_model(name, **cfg)
    buffers = [(n, b) for n, b in tm.named_buffers() if not n.endswith("num_batches_tracked")]
    if not buffers:
        return None
    with torch.no_grad():
        for n, b in buffers:
            b.copy_(torch.rand(b.shape) + 0.5 if "var" in n else torch.randn(b.shape) * 0.1)
    save_safetensors(path, tm.state_dict())
    return path


def _assert_all_ok(report, name: str, cfg: dict) -> None:
    assert report.ok, str(report)
    assert report.mismatches == [] and report.error is None and report.warnings == []
    assert [r.name for r in report.rows] == _leaves(name, cfg)
    for r in report.rows:
        # drift: end-to-end gradients past a kink (ReLU at 0, max-pool near-tie); see below
        assert r.status in (("ok", "drift") if report.grad else ("ok",)), r
        assert r.shape == r.jax_shape and r.activation.max_abs <= r.activation.tol
        assert r.buffers is None or r.buffers.ok
        assert not report.grad or r.local.ok
    if report.drift_from is not None:  # it can only start at a non-differentiable layer
        assert report.drift_from.type in ("ReLU", "MaxPool2d"), str(report)
    json.dumps(report.to_dict(), allow_nan=False)


@pytest.mark.parametrize(("name", "cfg", "size"), CASES)
def test_eval_report_agrees(name: str, cfg: dict, size: int, tmp_path: Path) -> None:
    weights = _trained_looking_weights(tmp_path / "w.safetensors", name, cfg)
    report = parity_report(name, cfg, weights=weights, input_size=size, batch=_batch(size))
    _assert_all_ok(report, name, cfg)
    assert report.weights == (str(weights) if weights else
                              "torch default init after torch.manual_seed(0)")
    assert report.modules_compared == len(list(jaxcnn.named_modules(
        jaxcnn.create_model(name, **cfg))))
    assert report.precision["jax_default_matmul_precision"] == "highest"
    assert report.precision["torch.backends.cuda.matmul.allow_tf32"] is False


@pytest.mark.parametrize(("name", "cfg", "size"), CASES)
def test_train_grad_report_agrees(name: str, cfg: dict, size: int) -> None:
    report = parity_report(name, cfg, train=True, grad=True, input_size=size,
                           batch=_batch(size), seed=3)
    _assert_all_ok(report, name, cfg)
    assert all(r.grad_out is not None and r.grad_in is not None for r in report.rows)
    assert all((r.buffers is not None) == ("BatchNorm" in r.type) for r in report.rows)
    with torch.device("meta"):
        names = [n for n, _ in torch_ref.create_model(name, **cfg).named_parameters()]
    assert list(report.param_grads) == names
    if report.drift_from is None:
        assert all(d.ok for d in report.param_grads.values()), str(report)
    assert report.loss is not None and report.loss[0] == pytest.approx(report.loss[1], rel=1e-5)
    assert report.objective == ("mean cross-entropy" if get_spec(name).classifier
                                else "sum of outputs")


@pytest.mark.parametrize(("name", "cfg", "size"), CASES)
def test_planted_padding_is_named_first(name: str, cfg: dict, size: int) -> None:
    model = jaxcnn.create_model(name, **cfg)
    convs = [n for n, m in jaxcnn.named_modules(model) if torch_type(m) == "Conv2d"]
    target = convs[-1]  # the last Conv2d: every layer before it must still agree
    conv = get_module(model, target)
    planted = replace_module(model, target, conv.clone(padding=conv.padding + 1))
    report = parity_report(name, cfg, jax_model=planted, input_size=size, batch=2)
    assert not report.ok
    first = report.mismatches[0]
    assert (first.name, first.field) == (target, "padding") and len(report.mismatches) == 1
    p = conv.padding
    assert (first.torch, first.jaxcnn) == ((p, p), (p + 1, p + 1))
    assert report.first_failure.name == target
    assert report.first_failure.status in ("over", "shape")
    rows = [r.name for r in report.rows]
    assert all(r.status == "ok" for r in report.rows[:rows.index(target)])
    assert f">> {target}: padding: torch" in str(report)


@pytest.mark.parametrize(("name", "cfg", "size"), BN_CASES)
def test_planted_batchnorm_momentum_is_named_first(name: str, cfg: dict, size: int) -> None:
    model = jaxcnn.create_model(name, **cfg)
    bn = get_module(model, "5")
    # the other framework's number: 0.9 in torch's convention, 0.1 in the book's
    wrong = 0.9 if cfg["bn"] == "torch" else 0.1
    planted = replace_module(model, "5", bn.clone(momentum=wrong))
    report = parity_report(name, cfg, jax_model=planted, train=True, input_size=size)
    assert [(m.name, m.field) for m in report.mismatches] == [("5", "momentum")]
    assert report.mismatches[0].jaxcnn.startswith(f"{wrong:g} [")
    row = report.first_failure
    assert row.name == "5" and row.status == "over"
    assert row.activation.ok and not row.buffers.ok  # same output, wrong running statistics
    assert not report.ok


def test_book_batchnorm_in_eval_mode_is_flagged() -> None:
    report = parity_report("lenet_bn", {"bn": "scratch"}, batch=4)
    assert len(report.warnings) == 1 and report.warnings[0].startswith("BatchNorm 1, 5, 10, 13:")
    assert "316x" in report.warnings[0]


def _call(module: torch.nn.Module, value: np.ndarray, out: np.ndarray, g_in: np.ndarray,
          g_out: np.ndarray) -> torch_ref.Call:
    x, y = torch.tensor(value, requires_grad=True), torch.tensor(out, requires_grad=True)
    x.grad, y.grad = torch.tensor(g_in), torch.tensor(g_out)
    return torch_ref.Call("p", module, x, y)


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (0, 2, 3, 1))


def test_max_pool_tie_at_zero_is_explained_and_a_real_difference_is_not() -> None:
    one = np.ones((1, 1, 1, 1), np.float32)
    routed = np.array([[[[1, 0], [0, 0]]]], np.float32)  # torch: the first of the tied zeros
    moved = np.array([[[[0, 1], [0, 0]]]], np.float32)  # another, equally valid, tied zero

    def row(value: np.ndarray, local_gx: np.ndarray) -> LayerRow:
        call = _call(torch.nn.MaxPool2d(2), value, value.max(keepdims=True), routed, one)
        run = JaxRun({"p": (_nhwc(value), _nhwc(value.max(keepdims=True)))}, {},
                     grads={"p": (_nhwc(routed), _nhwc(one))})
        ctx = RowContext(run, {}, {}, {}, {"p": (_nhwc(local_gx), {})},
                       {"p": MaxPool2d(2, 2)}, False, 1e-5)
        return compare_row(call, ctx)

    zeros = np.zeros((1, 1, 2, 2), np.float32)  # a ReLU output: the window ties at 0
    tied = row(zeros, moved)
    assert tied.status == "tie" and not tied.failed and not tied.local.ok
    real = zeros.copy()
    real[0, 0, 0, 0] = 0.5  # the max is unique: routing it elsewhere is a bug
    wrong = row(real, moved)
    assert wrong.status == "over" and wrong.failed


def test_end_to_end_drift_with_agreeing_local_backward_does_not_fail() -> None:
    value = np.array([[1.0, -1.0]], np.float32)
    out = np.maximum(value, 0)
    g_torch, g_jax = np.array([[1.0, 1.0]], np.float32), np.array([[1.5, 1.0]], np.float32)
    call = _call(torch.nn.ReLU(), value, out, g_torch * (value > 0), g_torch)
    run = JaxRun({"p": (value, out)}, {}, grads={"p": (g_jax * (value > 0), g_jax)})
    local = {"p": (g_torch * (value > 0), {})}  # fed torch's cotangent, jaxcnn's ReLU agrees
    ctx = RowContext(run, {}, {}, {}, local, {"p": ReLU()}, False, 1e-5)
    r = compare_row(call, ctx)
    assert r.status == "drift" and r.local.ok and not r.grad_out.ok
    report = ParityReport("x", {}, False, True, 1, 0, (1, 2), "w", 1e-5, rows=[r])
    assert report.ok and report.drift_from is r and "drift: the end-to-end" in str(report)
    bad = RowContext(run, {}, {}, {}, {"p": (g_jax * (value > 0), {})}, {"p": ReLU()}, False, 1e-5)
    assert compare_row(call, bad).status == "over"  # its own backward disagrees: a real failure


def test_cli_parity(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parity", "lenet", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "configuration: 14 modules, hyper-parameters identical" in out
    assert out.rstrip().endswith("result: OK, every layer within tolerance")
    assert main(["parity", "lenet", "--batch", "4", "--json", "--train", "--grad"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["batch"] == 4 and len(data["rows"]) == 11
    assert data["rows"][0]["grad_out"]["max_abs"] <= data["rows"][0]["grad_out"]["tol"]
    assert main(["parity", "lenet", "--batch", "4", "--rtol", "1e-12"]) == 1
    out = capsys.readouterr().out
    assert ">>  conv.0" in out and "result: FAIL, first layer over tolerance: conv.0" in out
    assert main(["parity", "lenet", "--bn", "torch"]) == 2
    assert "has no option 'bn'" in capsys.readouterr().err
