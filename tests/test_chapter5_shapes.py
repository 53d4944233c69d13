"""The rest of chapter 5 (GoogLeNet, ResNet-18, DenseNet): per-child output shapes as the book
prints them, from :func:`jaxcnn.summary` (shape-only, traced with ``jax.eval_shape``) and from
``jaxcnn summary``. Torch-free."""

from __future__ import annotations

import pytest

import jaxcnn
from jaxcnn.cli import main
from jaxcnn.inspect import summary

#: model -> (input size, [(child, NCHW output shape without the batch)]): the book's listings.
BOOK_SHAPES: dict[str, tuple[int, list[tuple[str, tuple[int, ...]]]]] = {
    "googlenet": (96, [
        ("0", (64, 24, 24)), ("1", (192, 12, 12)), ("2", (480, 6, 6)), ("3", (832, 3, 3)),
        ("4", (1024, 1, 1)), ("5", (1024,)), ("6", (10,)),
    ]),
    "resnet18": (224, [
        ("0", (64, 112, 112)), ("1", (64, 112, 112)), ("2", (64, 112, 112)),
        ("3", (64, 56, 56)),
        ("resnet_block1", (64, 56, 56)), ("resnet_block2", (128, 28, 28)),
        ("resnet_block3", (256, 14, 14)), ("resnet_block4", (512, 7, 7)),
        ("global_avg_pool", (512, 1, 1)), ("fc", (10,)),
    ]),
    "densenet": (96, [
        ("0", (64, 48, 48)), ("1", (64, 48, 48)), ("2", (64, 48, 48)), ("3", (64, 24, 24)),
        ("DenseBlosk_0", (192, 24, 24)), ("transition_block_0", (96, 12, 12)),
        ("DenseBlosk_1", (224, 12, 12)), ("transition_block_1", (112, 6, 6)),
        ("DenseBlosk_2", (240, 6, 6)), ("transition_block_2", (120, 3, 3)),
        ("DenseBlosk_3", (248, 3, 3)),
        ("BN", (248, 3, 3)), ("relu", (248, 3, 3)), ("global_avg_pool", (248, 1, 1)),
        ("fc", (10,)),
    ]),
}


@pytest.mark.parametrize("name", list(BOOK_SHAPES))
def test_per_child_output_shapes_are_the_books(name: str) -> None:
    size, expected = BOOK_SHAPES[name]
    s = summary(jaxcnn.create_model(name), (1, 1, size, size))
    assert [(r.name, r.output_shape) for r in s.rows] == [(n, (1, *shape))
                                                          for n, shape in expected]
    assert s.output_shape == (1, 10)


def test_module_types_and_state_dict_names() -> None:
    g = jaxcnn.create_model("googlenet")
    assert [jaxcnn.inspect.torch_type(m) for m in jaxcnn.children(g)] == \
        ["Sequential"] * 5 + ["FlattenLayer", "Linear"]
    names = dict(jaxcnn.named_modules(g))
    assert [jaxcnn.inspect.torch_type(names[f"2.0.{p}"]) for p in
            ("p1_1", "p2_1", "p2_2", "p3_1", "p3_2", "p4_1", "p4_2")] == \
        ["Conv2d"] * 5 + ["MaxPool2d", "Conv2d"]
    assert [jaxcnn.inspect.torch_type(m) for m in jaxcnn.children(names["1"])] == \
        ["Conv2d", "Conv2d", "MaxPool2d"]  # b2: no ReLU in this book

    r = dict(jaxcnn.named_modules(jaxcnn.create_model("resnet18")))
    assert [n for n, _ in jaxcnn.named_children(r["resnet_block2.0"])] == \
        ["conv1", "conv2", "conv3", "bn1", "bn2"]
    assert [n for n, _ in jaxcnn.named_children(r["resnet_block1.0"])] == \
        ["conv1", "conv2", "bn1", "bn2"]
    assert jaxcnn.inspect.torch_type(r["resnet_block1.0"]) == "Residual"

    d = dict(jaxcnn.named_modules(jaxcnn.create_model("densenet")))
    assert jaxcnn.inspect.torch_type(d["DenseBlosk_0"]) == "DenseBlock"
    assert jaxcnn.inspect.torch_type(d["DenseBlosk_0.net"]) == "ModuleList"
    assert [n for n, _ in jaxcnn.named_children(d["DenseBlosk_0.net"])] == ["0", "1", "2", "3"]


def test_resnet34_is_a_config_away() -> None:
    model = jaxcnn.create_model("resnet18", blocks_per_stage=(3, 4, 6, 3))
    s = summary(model, (1, 1, 224, 224))
    assert {r.name: r.output_shape for r in s.rows}["resnet_block4"] == (1, 512, 7, 7)
    blocks = dict(jaxcnn.named_children(model))
    assert [len(blocks[f"resnet_block{i}"].layers) for i in (1, 2, 3, 4)] == [3, 4, 6, 3]
    # torchvision's ResNet-34 has 21,282,122 parameters with 1000 classes on RGB; the book's
    # stem has one input channel and no bias-free convs, so only check it is larger than 18's
    assert s.total_params > summary(jaxcnn.create_model("resnet18"), (1, 1, 224, 224)).total_params


def test_cli_summary_prints_the_books_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "googlenet", "--input-shape", "1,1,96,96"]) in (0, None)
    out = capsys.readouterr().out
    for line in ("(1, 64, 24, 24)", "(1, 192, 12, 12)", "(1, 480, 6, 6)", "(1, 832, 3, 3)",
                 "(1, 1024, 1, 1)", "total params: 5,977,530"):
        assert line in out, out
