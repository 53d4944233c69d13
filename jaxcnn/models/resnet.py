"""Dive into Deep Learning 5.11: ResNet (ResNet-18 by default), with the book's module
structure and torch names.

Inputs are NHWC ``(N, H, W, in_channels)``; outputs are logits ``(N, num_classes)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax

from ..layers import (
    BatchNorm2d,
    Conv2d,
    FlattenLayer,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    named_sequential,
    sequential,
)
from ..registry import register_model


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Chapter 5.11 ResNet: a 7x7 stem (Conv, BN, ReLU, MaxPool), then one ``resnet_block`` per
    stage with ``blocks_per_stage[i]`` Residual blocks of ``channels[i]`` channels (every stage
    but the first halves the size), global average pooling and a Linear layer. The defaults are
    the book's ResNet-18; ``blocks_per_stage=(3, 4, 6, 3)`` is ResNet-34's layout."""

    num_classes: int = 10
    in_channels: int = 1
    blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2)
    channels: tuple[int, ...] = (64, 128, 256, 512)

    def __post_init__(self) -> None:
        blocks = tuple(int(b) for b in self.blocks_per_stage)
        chans = tuple(int(c) for c in self.channels)
        object.__setattr__(self, "blocks_per_stage", blocks)
        object.__setattr__(self, "channels", chans)
        if not blocks or len(blocks) != len(chans):
            raise ValueError(f"resnet: blocks_per_stage {blocks} and channels {chans} must be "
                             "non-empty and of the same length")
        if min(blocks) < 1 or min(chans) < 1:
            raise ValueError(f"resnet: blocks_per_stage {blocks} and channels {chans} must be "
                             "positive")


class Residual(nn.Module):
    """The book's ``Residual(in, out, use_1x1conv, stride)``: ``Y = relu(bn1(conv1 X))``,
    ``Y = bn2(conv2 Y)``, ``X = conv3(X)`` when there is a ``conv3``, output ``relu(Y + X)``.
    Children in torch's order ``conv1, conv2, conv3 (optional), bn1, bn2``."""

    conv1: Conv2d | None = None
    conv2: Conv2d | None = None
    conv3: Conv2d | None = None
    bn1: BatchNorm2d | None = None
    bn2: BatchNorm2d | None = None

    torch_type: ClassVar[str] = "Residual"

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x, train=train), train=train))
        y = self.bn2(self.conv2(y, train=train), train=train)
        if self.conv3 is not None:
            x = self.conv3(x, train=train)
        return jax.nn.relu(y + x)


def residual(in_channels: int, out_channels: int, use_1x1conv: bool = False,
             stride: int = 1) -> Residual:
    """``Residual(in_channels, out_channels, use_1x1conv, stride)``."""
    return Residual(
        conv1=Conv2d(in_channels, out_channels, 3, stride, 1),
        conv2=Conv2d(out_channels, out_channels, 3, padding=1),
        conv3=Conv2d(in_channels, out_channels, 1, stride) if use_1x1conv else None,
        bn1=BatchNorm2d(out_channels),
        bn2=BatchNorm2d(out_channels),
    )


def resnet_block(in_channels: int, out_channels: int, num_residuals: int,
                 first_block: bool = False) -> Sequential:
    """The book's ``resnet_block``: ``num_residuals`` Residual blocks; unless ``first_block``,
    the first has a 1x1 ``conv3`` and stride 2."""
    if first_block and in_channels != out_channels:
        raise ValueError(f"resnet_block: the first block keeps its channels, got "
                         f"{in_channels} -> {out_channels}")
    return sequential(*(
        residual(in_channels, out_channels, use_1x1conv=True, stride=2)
        if i == 0 and not first_block else residual(out_channels, out_channels)
        for i in range(num_residuals)
    ))


@register_model("resnet18", ResNetConfig, input_size=96, description="ResNet-18 (ch. 5.11)")
def resnet18(cfg: ResNetConfig) -> Sequential:
    """Children ``0``-``3`` (stem), ``resnet_block1`` ... ``resnet_blockK``,
    ``global_avg_pool`` and ``fc`` (FlattenLayer, Linear); at 224x224 the book's stages give
    64x56x56, 128x28x28, 256x14x14 and 512x7x7 (NCHW)."""
    c0 = cfg.channels[0]
    blocks: dict[str, nn.Module] = {
        "0": Conv2d(cfg.in_channels, c0, 7, 2, 3),
        "1": BatchNorm2d(c0),
        "2": ReLU(),
        "3": MaxPool2d(3, 2, 1),
    }
    prev = c0
    for i, (n, c) in enumerate(zip(cfg.blocks_per_stage, cfg.channels, strict=True), start=1):
        blocks[f"resnet_block{i}"] = resnet_block(prev, c, n, first_block=i == 1)
        prev = c
    blocks["global_avg_pool"] = GlobalAvgPool2d()
    blocks["fc"] = sequential(FlattenLayer(), Linear(prev, cfg.num_classes))
    return named_sequential(blocks)
