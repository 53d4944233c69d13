"""jaxcnn.inspect: torch-style reprs, summaries, module-tree surgery and the summary CLI."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn.cli import main
from jaxcnn.inspect import (
    get_module,
    intercept_calls,
    replace_module,
    summary,
    torch_style_repr,
    torch_type,
)
from jaxcnn.layers import Conv2d, ShapeError

# The seed notes' `for idx, m in enumerate(model.modules()): print(idx, "-", m)`, verbatim.
SEED_MODULES_LISTING = """\
0 - Model(
  (conv1): Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1))
  (conv2): Conv2d(64, 64, kernel_size=(3, 3), stride=(1, 1))
  (maxpool1): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
  (features): Sequential(
    (conv3): Conv2d(64, 128, kernel_size=(3, 3), stride=(1, 1))
    (conv4): Conv2d(128, 128, kernel_size=(3, 3), stride=(1, 1))
    (relu1): ReLU()
  )
)
1 - Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1))
2 - Conv2d(64, 64, kernel_size=(3, 3), stride=(1, 1))
3 - MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
4 - Sequential(
  (conv3): Conv2d(64, 128, kernel_size=(3, 3), stride=(1, 1))
  (conv4): Conv2d(128, 128, kernel_size=(3, 3), stride=(1, 1))
  (relu1): ReLU()
)
5 - Conv2d(64, 128, kernel_size=(3, 3), stride=(1, 1))
6 - Conv2d(128, 128, kernel_size=(3, 3), stride=(1, 1))
7 - ReLU()"""

# The seed notes' NiN listing for a (1, 1, 224, 224) input, torch.Size([...]) as tuples.
NIN_SEED_LINES = """\
0 output shape:  (1, 96, 54, 54)
1 output shape:  (1, 96, 26, 26)
2 output shape:  (1, 256, 26, 26)
3 output shape:  (1, 256, 12, 12)
4 output shape:  (1, 384, 12, 12)
5 output shape:  (1, 384, 5, 5)
6 output shape:  (1, 384, 5, 5)
7 output shape:  (1, 10, 5, 5)
8 output shape:  (1, 10, 1, 1)
9 output shape:  (1, 10)""".splitlines()

SEED_NAMES = [("", "Model"), ("conv1", "Conv2d"), ("conv2", "Conv2d"), ("maxpool1", "MaxPool2d"),
              ("features", "Sequential"), ("features.conv3", "Conv2d"),
              ("features.conv4", "Conv2d"), ("features.relu1", "ReLU")]


@pytest.fixture(scope="module")
def seed_model():
    model = jaxcnn.create_model("seed_example")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return model, variables


def test_seed_example_lists_its_modules_as_the_seed_notes(seed_model) -> None:
    model, _ = seed_model
    listing = "\n".join(f"{i} - {torch_style_repr(m)}" for i, m in
                        enumerate(jaxcnn.modules(model)))
    assert listing == SEED_MODULES_LISTING
    assert [(n, torch_type(m)) for n, m in jaxcnn.named_modules(model)] == SEED_NAMES
    assert [n for n, _ in jaxcnn.named_children(model)] == ["conv1", "conv2", "maxpool1",
                                                             "features"]
    features = get_module(model, "features")
    assert [torch_type(m) for m in jaxcnn.children(features)] == ["Conv2d", "Conv2d", "ReLU"]


def test_seed_example_parameters_and_forward_order(seed_model) -> None:
    model, variables = seed_model
    names = [n for n, _ in jaxcnn.named_parameters(model, variables)]
    assert names == [f"{m}.{p}" for m in ("conv1", "conv2", "features.conv3", "features.conv4")
                     for p in ("weight", "bias")]
    # 3*64*9+64 + 64*64*9+64 + 64*128*9+128 + 128*128*9+128, as torch counts them
    assert sum(a.size for a in jaxcnn.parameters(model, variables)) == 260_160
    assert list(jaxcnn.named_buffers(model, variables)) == []

    calls: list[str] = []

    def record(name, module, args, kwargs, call):
        calls.append(name)
        return call(*args, **kwargs)

    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    with intercept_calls(record):
        y = model.apply(variables, x)
    assert calls == [n for n, _ in SEED_NAMES]  # calls in torch's named_modules() order
    h = x
    for name in ("conv1", "conv2", "maxpool1", "features"):
        sub = get_module(model, name)
        h = sub.apply({"params": variables["params"].get(name, {})}, h)
    assert y.shape == (2, 10, 10, 128)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(h))


def test_torch_type_names_the_book_classes() -> None:
    assert torch_type(jaxcnn.create_model("lenet")) == "LeNet"
    assert torch_type(jaxcnn.create_model("alexnet")) == "AlexNet"
    assert torch_type(jaxcnn.create_model("nin")) == "Sequential"
    assert torch_style_repr(jaxcnn.create_model("lenet")).startswith("LeNet(\n  (conv): Seq")


def test_nin_summary_reads_as_the_seed_notes() -> None:
    model = jaxcnn.create_model("nin")
    s = summary(model, (1, 1, 224, 224), title="nin")
    assert s.shape_lines() == NIN_SEED_LINES
    assert [r.type for r in s.rows] == ["Sequential", "MaxPool2d"] * 3 + [
        "Dropout", "Sequential", "GlobalAvgPool2d", "FlattenLayer"]
    assert s.total_params == sum(r.params for r in s.rows) == 1_992_166
    assert s.output_shape == (1, 10)
    text = str(s)
    assert text.splitlines()[0] == "nin: input (1, 1, 224, 224) (NCHW)"
    assert "0     Sequential       (1, 96, 54, 54)      30,336" in text
    assert "total params: 1,992,166" in text

    nhwc = summary(model, (1, 224, 224, 1), layout="NHWC", depth=2)
    assert nhwc.rows[0].name == "0" and nhwc.rows[0].output_shape == (1, 54, 54, 96)
    assert nhwc.rows[1].name == "0.0" and nhwc.rows[1].type == "Conv2d"
    assert len(summary(model, (1, 1, 224, 224), depth=None).rows) == 10 + 4 * 6


def test_summary_rejects_bad_input() -> None:
    model = jaxcnn.create_model("lenet")
    with pytest.raises(ValueError, match="layout"):
        summary(model, (1, 1, 28, 28), layout="NCWH")
    with pytest.raises(ValueError, match="4 positive sizes"):
        summary(model, (1, 28, 28))
    with pytest.raises(ShapeError, match=r"conv\.0"):
        summary(model, (1, 3, 28, 28))


def test_replace_module_changes_one_layer() -> None:
    model = jaxcnn.create_model("seed_example")
    planted = replace_module(model, "features.conv3", Conv2d(64, 128, 3, padding=1))
    assert "(conv3): Conv2d(64, 128, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))" in \
        torch_style_repr(planted)
    assert "padding=(" not in torch_style_repr(model)  # the original is untouched
    assert [n for n, _ in jaxcnn.named_modules(planted)] == [n for n, _ in SEED_NAMES]
    s = summary(planted, (1, 3, 32, 32), depth=None)
    assert dict((r.name, r.output_shape) for r in s.rows)["features.conv3"] == (1, 128, 14, 14)
    for bad in ("features.conv9", "nope", "conv1.x"):
        with pytest.raises(KeyError):
            replace_module(model, bad, Conv2d(1, 1, 1))


def test_cli_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "nin", "--input-shape", "1,1,224,224", "--format", "seed"]) == 0
    assert capsys.readouterr().out.splitlines() == NIN_SEED_LINES
    assert main(["summary", "nin", "--input-shape", "1,1,224,224"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nin: input (1, 1, 224, 224) (NCHW)") and "9     FlattenLayer" in out
    assert main(["summary", "vgg11", "--ratio", "8", "--depth", "0", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"][1]["name"] == "vgg_block_1.0" and data["rows"][1]["params"] == 80
    assert main(["summary", "lenet", "--ratio", "8"]) == 2
    assert "has no option 'ratio'" in capsys.readouterr().err
    assert main(["summary", "lenet", "--input-shape", "1,3,28,28"]) == 1
    assert "conv.0" in capsys.readouterr().err
