"""Dive into Deep Learning, chapter 5 (LeNet .. NiN): configs and Flax builders with torch's
module structure and names, each registered where it is defined.

Inputs are NHWC ``(N, H, W, in_channels)``; outputs are logits ``(N, num_classes)``.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Literal

import flax.linen as nn
import jax

from ..layers import (
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    FlattenLayer,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    Sigmoid,
    flatten_torch_order,
    named_sequential,
    sequential,
)
from ..registry import register_model

VGG11_ARCH: tuple[tuple[int, int, int], ...] = (
    (1, 1, 64), (1, 64, 128), (2, 128, 256), (2, 256, 512), (2, 512, 512),
)


@dataclasses.dataclass(frozen=True)
class LeNetConfig:
    """Chapter 5.5 LeNet: sigmoid activations, 2x2 max pooling, 28x28 input."""

    num_classes: int = 10
    in_channels: int = 1


@dataclasses.dataclass(frozen=True)
class LeNetBNConfig:
    """Chapter 5.10 LeNet with BatchNorm: ``bn='torch'`` (nn.BatchNorm) or ``'scratch'`` (the
    book's hand-written BatchNorm)."""

    num_classes: int = 10
    in_channels: int = 1
    bn: Literal["torch", "scratch"] = "torch"

    def __post_init__(self) -> None:
        if self.bn not in ("torch", "scratch"):
            raise ValueError(f"lenet_bn: bn must be 'torch' or 'scratch', got {self.bn!r}")


@dataclasses.dataclass(frozen=True)
class AlexNetConfig:
    """Chapter 5.6 AlexNet for 224x224 single-channel input."""

    num_classes: int = 10
    in_channels: int = 1


@dataclasses.dataclass(frozen=True)
class VGGConfig:
    """Chapter 5.7 VGG: one ``(num_convs, in_channels, out_channels)`` triple per block; each
    block halves the spatial size, then three Linear layers (``fc_features -> hidden -> hidden
    -> num_classes``)."""

    conv_arch: tuple[tuple[int, int, int], ...] = VGG11_ARCH
    fc_features: int = 512 * 7 * 7
    fc_hidden_units: int = 4096
    num_classes: int = 10
    in_channels: int = 1

    def __post_init__(self) -> None:
        arch = tuple(tuple(int(v) for v in block) for block in self.conv_arch)
        object.__setattr__(self, "conv_arch", arch)
        if not arch or any(len(b) != 3 or min(b) < 1 for b in arch):
            raise ValueError(f"vgg: conv_arch must be positive (num_convs, in, out) triples, "
                             f"got {self.conv_arch!r}")
        if arch[0][1] != self.in_channels:
            raise ValueError(f"vgg: the first block takes {arch[0][1]} channels but "
                             f"in_channels={self.in_channels}")
        for i, (prev, block) in enumerate(itertools.pairwise(arch), start=2):
            if block[1] != prev[2]:
                raise ValueError(f"vgg: block {i} takes {block[1]} channels but block {i - 1} "
                                 f"gives {prev[2]}")


@dataclasses.dataclass(frozen=True)
class VGG11Config:
    """VGG-11; ``ratio`` divides every width (the book trains ``ratio=8``)."""

    ratio: int = 1
    num_classes: int = 10
    in_channels: int = 1

    def __post_init__(self) -> None:
        if self.ratio < 1 or 64 % self.ratio:
            raise ValueError(f"vgg11: ratio must divide 64, got {self.ratio}")

    def to_vgg(self) -> VGGConfig:
        r = self.ratio
        arch = tuple((n, cin if i == 0 else cin // r, cout // r)
                     for i, (n, cin, cout) in enumerate(VGG11_ARCH))
        arch = ((arch[0][0], self.in_channels, arch[0][2]), *arch[1:])
        return VGGConfig(arch, 512 * 7 * 7 // r, 4096 // r, self.num_classes, self.in_channels)


@dataclasses.dataclass(frozen=True)
class NiNConfig:
    """Chapter 5.8 Network in Network for 224x224 input."""

    num_classes: int = 10
    in_channels: int = 1




class ConvThenFC(nn.Module):
    """The book's ``LeNet``/``AlexNet`` class: ``self.conv``, then ``view(N, -1)`` in torch's
    (C, H, W) order, then ``self.fc``."""

    conv: Sequential
    fc: Sequential
    torch_type: str = "ConvThenFC"  # torch's class name, for reprs and summaries

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        feature = self.conv(x, train=train)
        return self.fc(flatten_torch_order(feature), train=train)


@register_model("lenet", LeNetConfig, input_size=28, description="LeNet (ch. 5.5)")
def lenet(cfg: LeNetConfig) -> ConvThenFC:
    """LeNet on ``(N, 28, 28, C)``; torch names ``conv.0``, ``conv.3``, ``fc.0/2/4``."""
    return ConvThenFC(
        conv=sequential(
            Conv2d(cfg.in_channels, 6, 5), Sigmoid(), MaxPool2d(2, 2),
            Conv2d(6, 16, 5), Sigmoid(), MaxPool2d(2, 2),
        ),
        fc=sequential(
            Linear(16 * 4 * 4, 120), Sigmoid(), Linear(120, 84), Sigmoid(),
            Linear(84, cfg.num_classes),
        ),
        torch_type="LeNet",
    )


@register_model("lenet_bn", LeNetBNConfig, input_size=28,
                description="LeNet with BatchNorm (ch. 5.10)")
def lenet_bn(cfg: LeNetBNConfig) -> Sequential:
    """LeNet with BatchNorm on ``(N, 28, 28, C)``: one Sequential, BN at ``1, 5, 10, 13``."""
    if cfg.bn == "torch":
        bn2, bn1 = BatchNorm2d, BatchNorm1d
    else:
        def bn2(c: int) -> BatchNorm:
            return BatchNorm(c, num_dims=4)

        def bn1(c: int) -> BatchNorm:
            return BatchNorm(c, num_dims=2)

    return sequential(
        Conv2d(cfg.in_channels, 6, 5), bn2(6), Sigmoid(), MaxPool2d(2, 2),
        Conv2d(6, 16, 5), bn2(16), Sigmoid(), MaxPool2d(2, 2),
        FlattenLayer(),
        Linear(16 * 4 * 4, 120), bn1(120), Sigmoid(),
        Linear(120, 84), bn1(84), Sigmoid(),
        Linear(84, cfg.num_classes),
    )


@register_model("alexnet", AlexNetConfig, input_size=224, description="AlexNet (ch. 5.6)")
def alexnet(cfg: AlexNetConfig) -> ConvThenFC:
    """AlexNet on ``(N, 224, 224, C)``; torch names ``conv.0/3/6/8/10``, ``fc.0/3/6``."""
    return ConvThenFC(
        conv=sequential(
            Conv2d(cfg.in_channels, 96, 11, 4), ReLU(), MaxPool2d(3, 2),
            Conv2d(96, 256, 5, 1, 2), ReLU(), MaxPool2d(3, 2),
            Conv2d(256, 384, 3, 1, 1), ReLU(),
            Conv2d(384, 384, 3, 1, 1), ReLU(),
            Conv2d(384, 256, 3, 1, 1), ReLU(), MaxPool2d(3, 2),
        ),
        fc=sequential(
            Linear(256 * 5 * 5, 4096), ReLU(), Dropout(0.5),
            Linear(4096, 4096), ReLU(), Dropout(0.5),
            Linear(4096, cfg.num_classes),
        ),
        torch_type="AlexNet",
    )


def vgg_block(num_convs: int, in_channels: int, out_channels: int) -> Sequential:
    """``num_convs`` x (3x3 conv, padding 1, ReLU), then 2x2 max pooling."""
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
                   ReLU()]
    return sequential(*layers, MaxPool2d(2, 2))


@register_model("vgg11", VGG11Config, input_size=224,
                description="VGG-11, widths divided by ratio (ch. 5.7)")
def vgg11(cfg: VGG11Config) -> Sequential:
    """VGG-11 (:func:`vgg` of ``cfg.to_vgg()``)."""
    return vgg(cfg.to_vgg())


@register_model("vgg", VGGConfig, input_size=224, description="VGG with any conv_arch (ch. 5.7)")
def vgg(cfg: VGGConfig) -> Sequential:
    """VGG: children ``vgg_block_1`` ... ``vgg_block_k`` and ``fc`` (Flatten first)."""
    blocks: dict[str, nn.Module] = {
        f"vgg_block_{i}": vgg_block(*arch) for i, arch in enumerate(cfg.conv_arch, start=1)
    }
    hidden = cfg.fc_hidden_units
    blocks["fc"] = sequential(
        FlattenLayer(),
        Linear(cfg.fc_features, hidden), ReLU(), Dropout(0.5),
        Linear(hidden, hidden), ReLU(), Dropout(0.5),
        Linear(hidden, cfg.num_classes),
    )
    return named_sequential(blocks)


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int,
              padding: int) -> Sequential:
    """A conv (given geometry) then two 1x1 convs, each followed by ReLU."""
    return sequential(
        Conv2d(in_channels, out_channels, kernel_size, stride, padding), ReLU(),
        Conv2d(out_channels, out_channels, 1), ReLU(),
        Conv2d(out_channels, out_channels, 1), ReLU(),
    )


@register_model("nin", NiNConfig, input_size=224,
                description="Network in Network (ch. 5.8)")
def nin(cfg: NiNConfig) -> Sequential:
    """NiN on ``(N, 224, 224, C)``; ten children whose outputs are the seed notes' shapes."""
    return sequential(
        nin_block(cfg.in_channels, 96, 11, 4, 0), MaxPool2d(3, 2),
        nin_block(96, 256, 5, 1, 2), MaxPool2d(3, 2),
        nin_block(256, 384, 3, 1, 1), MaxPool2d(3, 2),
        Dropout(0.5),
        nin_block(384, cfg.num_classes, 3, 1, 1),
        GlobalAvgPool2d(),
        FlattenLayer(),
    )
