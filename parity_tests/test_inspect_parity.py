"""jaxcnn's traversal, reprs and summaries against torch's, for every registered model and test
case: names, order, types, printouts, parameter counts and per-layer output shapes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest
import torch

import jaxcnn
import torch_ref
from jaxcnn.inspect import summary, torch_style_repr, torch_type
from jaxcnn.registry import get_spec

from ._cases import TEST_CONFIGS

CASES = [pytest.param(name, cfg, size, id=f"{name}-{i}")
         for name in jaxcnn.list_models()
         for i, (cfg, size) in enumerate(TEST_CONFIGS[name])]

NIN_SEED_LINES = [
    "0 output shape:  (1, 96, 54, 54)", "1 output shape:  (1, 96, 26, 26)",
    "2 output shape:  (1, 256, 26, 26)", "3 output shape:  (1, 256, 12, 12)",
    "4 output shape:  (1, 384, 12, 12)", "5 output shape:  (1, 384, 5, 5)",
    "6 output shape:  (1, 384, 5, 5)", "7 output shape:  (1, 10, 5, 5)",
    "8 output shape:  (1, 10, 1, 1)", "9 output shape:  (1, 10)",
]



def _pair(name: str, cfg: dict) -> tuple:
    """The jaxcnn model and its torch twin (on the meta device: structure only)."""
    with torch.device("meta"):
        tm = torch_ref.create_model(name, **cfg)
    return jaxcnn.create_model(name, **cfg), tm


@pytest.mark.parametrize(("name", "cfg", "size"), CASES)
def test_printout_equals_torch(name: str, cfg: dict, size: int) -> None:
    jm, tm = _pair(name, cfg)
    assert torch_style_repr(jm) == str(tm)
    jmods, tmods = list(jaxcnn.modules(jm)), list(tm.modules())
    assert len(jmods) == len(tmods)
    for i, (a, b) in enumerate(zip(jmods, tmods, strict=True)):
        assert f"{i} - {torch_style_repr(a)}" == f"{i} - {b}"


@pytest.mark.parametrize(("name", "cfg", "size"), CASES)
def test_module_names_order_and_types_equal_torch(name: str, cfg: dict, size: int) -> None:
    jm, tm = _pair(name, cfg)
    assert [(n, torch_type(m)) for n, m in jaxcnn.named_modules(jm)] == \
        [(n, type(m).__name__) for n, m in tm.named_modules()]
    assert [(n, torch_type(m)) for n, m in jaxcnn.named_children(jm)] == \
        [(n, type(m).__name__) for n, m in tm.named_children()]
    assert [torch_type(m) for m in jaxcnn.children(jm)] == \
        [type(m).__name__ for m in tm.children()]


@pytest.mark.parametrize(("name", "cfg", "size"), CASES)
def test_parameters_and_buffers_equal_torch(name: str, cfg: dict, size: int) -> None:
    jm, tm = _pair(name, cfg)
    c = jaxcnn.make_config(name, **cfg).in_channels
    variables = jax.eval_shape(lambda: jm.init(jax.random.key(0), jnp.zeros((1, size, size, c))))
    params = list(jaxcnn.named_parameters(jm, variables))
    assert [n for n, _ in params] == [n for n, _ in tm.named_parameters()]
    assert [math.prod(a.shape) for _, a in params] == [p.numel() for p in tm.parameters()]
    total = sum(math.prod(a.shape) for a in jaxcnn.parameters(jm, variables))
    assert total == sum(p.numel() for p in tm.parameters()) > 0
    assert [n for n, _ in jaxcnn.named_buffers(jm, variables)] == \
        [n for n, _ in tm.named_buffers()]
    assert len(list(jaxcnn.buffers(jm, variables))) == len(list(tm.buffers()))


@pytest.mark.parametrize(("name", "cfg", "size"), CASES)
def test_summary_equals_torch_hooks(name: str, cfg: dict, size: int) -> None:
    jm, tm = _pair(name, cfg)
    shape = (2, jaxcnn.make_config(name, **cfg).in_channels, size, size)
    for depth in (None, 1):
        ours, theirs = summary(jm, shape, depth=depth), torch_ref.summary(tm, shape, depth=depth)
        assert ours.rows == theirs.rows  # names, types, output shapes, parameter counts
        # every module runs, except a ModuleList (DenseNet's ``net``): torch never calls one
        assert all(r.output_shape is not None for r in ours.rows if r.type != "ModuleList")
        assert (ours.total_params, ours.output_shape) == (theirs.total_params,
                                                          theirs.output_shape)
        assert str(ours) == str(theirs)


def test_torch_summary_of_nin_reads_as_the_seed_notes() -> None:
    torch.manual_seed(0)
    tm = torch_ref.create_model("nin")  # a real forward on the CPU
    s = torch_ref.summary(tm, (1, 1, 224, 224))
    assert s.shape_lines() == NIN_SEED_LINES
    assert s.shape_lines() == summary(jaxcnn.create_model("nin"), (1, 1, 224, 224)).shape_lines()
    assert tm.training  # the mode is restored


def test_seed_example_twin_is_the_seed_model() -> None:
    jm, tm = _pair("seed_example", {})
    assert type(tm).__name__ == "Model" and not get_spec("seed_example").classifier
    assert [n for n, _ in tm.named_modules()] == [n for n, _ in jaxcnn.named_modules(jm)] == [
        "", "conv1", "conv2", "maxpool1", "features", "features.conv3", "features.conv4",
        "features.relu1"]
