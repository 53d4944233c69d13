"""Dive into Deep Learning 5.12: DenseNet, with the book's module structure and torch names
(including its ``DenseBlosk_%d`` spelling, which the state dict keeps).

Inputs are NHWC ``(N, H, W, in_channels)``; outputs are logits ``(N, num_classes)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..layers import (
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    FlattenLayer,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ModuleList,
    ReLU,
    Sequential,
    module_list,
    named_sequential,
    sequential,
)
from ..registry import register_model


@dataclasses.dataclass(frozen=True)
class DenseNetConfig:
    """Chapter 5.12 DenseNet: a 7x7 stem of ``num_channels`` channels, one DenseBlock of
    ``num_convs[i]`` conv blocks (each adding ``growth_rate`` channels) per stage, a transition
    block halving channels and size between stages, then BN, ReLU, global average pooling and
    a Linear layer. The defaults are the book's (248 channels at the end)."""

    num_classes: int = 10
    in_channels: int = 1
    growth_rate: int = 32
    num_convs: tuple[int, ...] = (4, 4, 4, 4)
    num_channels: int = 64

    def __post_init__(self) -> None:
        convs = tuple(int(n) for n in self.num_convs)
        object.__setattr__(self, "num_convs", convs)
        if not convs or min(convs) < 1:
            raise ValueError(f"densenet: num_convs must be positive counts, got {convs}")
        if self.growth_rate < 1 or self.num_channels < 1:
            raise ValueError(f"densenet: growth_rate ({self.growth_rate}) and num_channels "
                             f"({self.num_channels}) must be positive")


def conv_block(in_channels: int, out_channels: int) -> Sequential:
    """The book's ``conv_block``: BatchNorm2d, ReLU, 3x3 conv (padding 1)."""
    return sequential(BatchNorm2d(in_channels), ReLU(),
                      Conv2d(in_channels, out_channels, 3, padding=1))


class DenseBlock(nn.Module):
    """The book's ``DenseBlock(num_convs, in_channels, out_channels)``: ``net`` is a ModuleList
    of conv blocks; each block's output is concatenated to its input on the channels (the last
    NHWC axis), so the output has ``in_channels + num_convs * out_channels`` channels."""

    net: ModuleList

    torch_type: ClassVar[str] = "DenseBlock"

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for blk in self.net.layers:
            y = blk(x, train=train)
            x = jnp.concatenate((x, y), axis=-1)
        return x


def dense_block(num_convs: int, in_channels: int, out_channels: int) -> DenseBlock:
    """``DenseBlock(num_convs, in_channels, out_channels)``."""
    return DenseBlock(net=module_list(*(
        conv_block(in_channels + i * out_channels, out_channels) for i in range(num_convs))))


def transition_block(in_channels: int, out_channels: int) -> Sequential:
    """The book's ``transition_block``: BatchNorm2d, ReLU, 1x1 conv, AvgPool2d(2, 2)."""
    return sequential(BatchNorm2d(in_channels), ReLU(), Conv2d(in_channels, out_channels, 1),
                      AvgPool2d(2, 2))


@register_model("densenet", DenseNetConfig, input_size=96, description="DenseNet (ch. 5.12)")
def densenet(cfg: DenseNetConfig) -> Sequential:
    """Children ``0``-``3`` (stem), ``DenseBlosk_0``, ``transition_block_0``, ...,
    ``DenseBlosk_K``, ``BN``, ``relu``, ``global_avg_pool``, ``fc``; at 96x96 the book's dense
    blocks give 192x24x24, 224x12x12, 240x6x6 and 248x3x3 (NCHW)."""
    c = cfg.num_channels
    blocks: dict[str, nn.Module] = {
        "0": Conv2d(cfg.in_channels, c, 7, 2, 3),
        "1": BatchNorm2d(c),
        "2": ReLU(),
        "3": MaxPool2d(3, 2, 1),
    }
    last = len(cfg.num_convs) - 1
    for i, num_convs in enumerate(cfg.num_convs):
        blocks[f"DenseBlosk_{i}"] = dense_block(num_convs, c, cfg.growth_rate)
        c += num_convs * cfg.growth_rate
        if i != last:
            blocks[f"transition_block_{i}"] = transition_block(c, c // 2)
            c //= 2
    blocks["BN"] = BatchNorm2d(c)
    blocks["relu"] = ReLU()
    blocks["global_avg_pool"] = GlobalAvgPool2d()
    blocks["fc"] = sequential(FlattenLayer(), Linear(c, cfg.num_classes))
    return named_sequential(blocks)
