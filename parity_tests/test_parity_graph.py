"""The layer-by-layer parity report on the chapter's graph models (GoogLeNet, ResNet-18,
DenseNet): every module call in forward order on both sides, the merge points (Inception paths
and concat, the residual sum, each DenseBlock concat), gradients per call; and a planted error
inside a branch is named exactly.

One train-mode report with gradients per model (activations, BatchNorm statistics, end-to-end
and per-layer gradients), and one eval-mode report per planted error (with trained-looking
BatchNorm statistics, so eval mode is covered too): the models are large for a 2-core CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import jax
import pytest
import torch

import jaxcnn
import torch_ref
from jaxcnn.inspect import get_module, replace_module
from jaxcnn.layers import Conv2d
from torch_ref.crosscheck.parity import parity_report

from ._cases import DIFFS, TEST_CONFIGS
from .test_parity_report import _trained_looking_weights

GRAPH_MODELS = ("googlenet", "resnet18", "densenet")
GRAPH_TYPES = ("Inception", "Residual", "DenseBlock")


class ScaledConv2d(Conv2d):
    """A planted mistake with the same configuration: the kernel and bias scaled by 1.001 (the
    output scaled, a convolution being linear in both)."""

    torch_type: ClassVar[str] = "Conv2d"

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return super().__call__(x, train=train) * 1.001


def _torch_calls(name: str, cfg: dict, size: int) -> list[str]:
    """torch's leaf and graph-module calls in the order they return (a forward hook each)."""
    tm = torch_ref.create_model(name, **cfg)
    order: list[str] = []
    for n, m in tm.named_modules():
        if n and (next(m.children(), None) is None or type(m).__name__ in GRAPH_TYPES):
            m.register_forward_hook(lambda *_, n=n: order.append(n))
    with torch.no_grad():
        tm.eval()(torch.zeros(1, cfg.get("in_channels", 1), size, size))
    return order


def _record(report) -> None:
    for r in report.rows:
        for check, d in (("graph activation", r.activation), ("graph grad out", r.grad_out),
                         ("graph local bwd", r.local)):
            if d is not None and d.tol > 0:
                prev = DIFFS.get((report.model, check))
                if prev is None or d.max_abs / d.tol > prev[0] / prev[1]:
                    DIFFS[(report.model, check)] = (d.max_abs, d.tol)


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_train_grad_report_on_graphs(name: str) -> None:
    cfg, size = TEST_CONFIGS[name][0]
    report = parity_report(name, cfg, train=True, grad=True, input_size=size, seed=3)
    _record(report)
    assert report.ok, str(report)
    assert report.mismatches == [] and report.error is None and report.warnings == []
    modules = [r for r in report.rows if r.type not in ("path", "concat")]
    # every leaf and graph module once, in torch's call order (a Residual's conv3 after bn2,
    # the Residual after its children), recorded by hooks on both sides
    assert [r.name for r in modules] == _torch_calls(name, cfg, size)
    model = jaxcnn.create_model(name, **cfg)
    kinds = {n: jaxcnn.inspect.torch_type(m) for n, m in jaxcnn.named_modules(model)}
    paths = [r.name for r in report.rows if r.type == "path"]
    cats = [r.name for r in report.rows if r.type == "concat"]
    incs = [n for n, k in kinds.items() if k == "Inception"]
    assert paths == [f"{n}[p{k}]" for n in incs for k in (1, 2, 3, 4)]
    names = [r.name for r in report.rows]
    for n in incs:  # the paths just before the concat, after the last path's layers
        assert names.index(f"{n}.p4_2") + 1 == names.index(f"{n}[p1]")
        assert names.index(f"{n}[p4]") + 1 == names.index(n)
    if name == "densenet":
        assert cats == [f"DenseBlosk_{i}[cat0]" for i in range(len(cfg["num_convs"]))]
        # a concat's row comes before the conv block reading it
        assert names.index("DenseBlosk_0[cat0]") + 1 == names.index("DenseBlosk_0.net.1.0")
    if name == "resnet18":
        i = names.index("resnet_block2.0")
        assert names[i - 5:i] == [f"resnet_block2.0.{c}" for c in
                                  ("conv1", "bn1", "conv2", "bn2", "conv3")]
    for r in report.rows:
        assert r.status in ("ok", "drift"), r
        assert r.shape == r.jax_shape and r.activation.ok
        assert r.buffers is None or r.buffers.ok
        if r.type in ("path", "concat"):
            assert r.grad_in is None and r.local is None
            assert (r.grad_out is not None) == (r.type == "path")
        elif r.type in GRAPH_TYPES:  # their own backward is their layers' (local) and JAX's
            assert r.grad_out is not None and r.grad_in is not None and r.local is None
        else:
            assert r.grad_out is not None and r.grad_in is not None and r.local.ok
        assert (r.buffers is not None) == ("BatchNorm" in r.type)
    if report.drift_from is not None:  # only past a kink: a ReLU, a max-pool, a merge's ReLU
        assert report.drift_from.type in ("ReLU", "MaxPool2d", *GRAPH_TYPES, "path"), \
            str(report)
    else:
        assert all(d.ok for d in report.param_grads.values()), str(report)
    with torch.device("meta"):
        params = [n for n, _ in torch_ref.create_model(name, **cfg).named_parameters()]
    assert list(report.param_grads) == params
    assert report.loss is not None and report.loss[0] == pytest.approx(report.loss[1], rel=1e-5)
    assert "graph rows: " in str(report)
    json.dumps(report.to_dict(), allow_nan=False)


PLANTED = [
    ("googlenet", "2.0.p3_2"),  # b3's first Inception, path 3's 5x5 conv
    ("resnet18", "resnet_block2.0.conv3"),  # the 1x1 shortcut
    ("densenet", "DenseBlosk_1.net.1.2"),  # a dense block's conv
]


@pytest.mark.parametrize(("name", "target"), PLANTED)
def test_planted_weight_in_a_branch_is_named(name: str, target: str, tmp_path: Path) -> None:
    cfg, size = TEST_CONFIGS[name][0]
    model = jaxcnn.create_model(name, **cfg)
    conv = get_module(model, target)
    planted = replace_module(model, target, ScaledConv2d(**{
        f: getattr(conv, f) for f in ("in_channels", "out_channels", "kernel_size", "stride",
                                      "padding", "use_bias")}))
    weights = _trained_looking_weights(tmp_path / "w.safetensors", name, cfg)
    report = parity_report(name, cfg, jax_model=planted, weights=weights, input_size=size,
                           batch=2)
    assert report.mismatches == [] and report.warnings == []
    first = report.first_failure
    assert first is not None and (first.name, first.status) == (target, "over"), str(report)
    names = [r.name for r in report.rows]
    assert all(r.status == "ok" for r in report.rows[:names.index(target)]), str(report)
    assert f"result: FAIL, first layer over tolerance: {target} (Conv2d)" in str(report)
    print(next(line for line in str(report).splitlines() if line.startswith(">>")))
