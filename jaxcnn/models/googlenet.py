"""Dive into Deep Learning 5.9: GoogLeNet, with the book's module structure and torch names.

Inputs are NHWC ``(N, H, W, in_channels)``; outputs are logits ``(N, num_classes)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..layers import (
    Conv2d,
    FlattenLayer,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    sequential,
)
from ..registry import register_model


@dataclasses.dataclass(frozen=True)
class GoogLeNetConfig:
    """Chapter 5.9 GoogLeNet (the book's: no ReLU in ``b2``), trained at 96x96. Any input
    size runs (the stride-2 conv and poolings pad, so no stage shrinks below 1x1); 32x32 ends
    the stages at 8, 4, 2, 1 and 1."""

    num_classes: int = 10
    in_channels: int = 1


class Inception(nn.Module):
    """The book's ``Inception(in_c, c1, c2, c3, c4)``: four ReLU'd paths concatenated on the
    channels (the last NHWC axis) in the order p1, p2, p3, p4. Children in torch's order:
    ``p1_1`` (1x1 -> c1), ``p2_1`` (1x1 -> c2[0]), ``p2_2`` (3x3 p1 -> c2[1]), ``p3_1`` (1x1 ->
    c3[0]), ``p3_2`` (5x5 p2 -> c3[1]), ``p4_1`` (MaxPool2d(3, 1, 1)), ``p4_2`` (1x1 -> c4)."""

    p1_1: Conv2d
    p2_1: Conv2d
    p2_2: Conv2d
    p3_1: Conv2d
    p3_2: Conv2d
    p4_1: MaxPool2d
    p4_2: Conv2d

    torch_type: ClassVar[str] = "Inception"

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        relu = jax.nn.relu
        p1 = relu(self.p1_1(x, train=train))
        p2 = relu(self.p2_2(relu(self.p2_1(x, train=train)), train=train))
        p3 = relu(self.p3_2(relu(self.p3_1(x, train=train)), train=train))
        p4 = relu(self.p4_2(self.p4_1(x, train=train), train=train))
        return jnp.concatenate((p1, p2, p3, p4), axis=-1)


def inception(in_c: int, c1: int, c2: tuple[int, int], c3: tuple[int, int], c4: int
              ) -> Inception:
    """``Inception(in_c, c1, c2, c3, c4)``; the output has ``c1 + c2[1] + c3[1] + c4``
    channels."""
    return Inception(
        p1_1=Conv2d(in_c, c1, 1),
        p2_1=Conv2d(in_c, c2[0], 1),
        p2_2=Conv2d(c2[0], c2[1], 3, padding=1),
        p3_1=Conv2d(in_c, c3[0], 1),
        p3_2=Conv2d(c3[0], c3[1], 5, padding=2),
        p4_1=MaxPool2d(3, 1, 1),
        p4_2=Conv2d(in_c, c4, 1),
    )


@register_model("googlenet", GoogLeNetConfig, input_size=96, description="GoogLeNet (ch. 5.9)")
def googlenet(cfg: GoogLeNetConfig) -> Sequential:
    """``Sequential(b1, b2, b3, b4, b5, FlattenLayer, Linear(1024, num_classes))``; at 96x96 the
    blocks give 64x24x24, 192x12x12, 480x6x6, 832x3x3 and 1024x1x1 (NCHW)."""
    b1 = sequential(Conv2d(cfg.in_channels, 64, 7, 2, 3), ReLU(), MaxPool2d(3, 2, 1))
    b2 = sequential(Conv2d(64, 64, 1), Conv2d(64, 192, 3, padding=1), MaxPool2d(3, 2, 1))
    b3 = sequential(
        inception(192, 64, (96, 128), (16, 32), 32),
        inception(256, 128, (128, 192), (32, 96), 64),
        MaxPool2d(3, 2, 1),
    )
    b4 = sequential(
        inception(480, 192, (96, 208), (16, 48), 64),
        inception(512, 160, (112, 224), (24, 64), 64),
        inception(512, 128, (128, 256), (24, 64), 64),
        inception(512, 112, (144, 288), (32, 64), 64),
        inception(528, 256, (160, 320), (32, 128), 128),
        MaxPool2d(3, 2, 1),
    )
    b5 = sequential(
        inception(832, 256, (160, 320), (32, 128), 128),
        inception(832, 384, (192, 384), (48, 128), 128),
        GlobalAvgPool2d(),
    )
    return sequential(b1, b2, b3, b4, b5, FlattenLayer(), Linear(1024, cfg.num_classes))
