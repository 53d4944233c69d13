"""The book's chapter-5 CNNs as Flax modules with torch's module structure and names.

Inputs are NHWC ``(N, H, W, in_channels)``; outputs are logits ``(N, num_classes)``.
"""

from __future__ import annotations

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
from ..registry import (
    AlexNetConfig,
    LeNetBNConfig,
    LeNetConfig,
    NiNConfig,
    SeedExampleConfig,
    VGG11Config,
    VGGConfig,
)
from ._seed_example import seed_example


class ConvThenFC(nn.Module):
    """The book's ``LeNet``/``AlexNet`` class: ``self.conv``, then ``view(N, -1)`` in torch's
    (C, H, W) order, then ``self.fc``."""

    conv: Sequential
    fc: Sequential
    torch_type: str = "ConvThenFC"  # torch's class name, for reprs and summaries

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        feature = self.conv(x, train=train)
        return self.fc(flatten_torch_order(feature), train=train)


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


def vgg(cfg: VGGConfig | VGG11Config) -> Sequential:
    """VGG: children ``vgg_block_1`` ... ``vgg_block_k`` and ``fc`` (Flatten first)."""
    if isinstance(cfg, VGG11Config):
        cfg = cfg.to_vgg()
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


BUILDERS = {
    LeNetConfig: lenet,
    LeNetBNConfig: lenet_bn,
    AlexNetConfig: alexnet,
    VGGConfig: vgg,
    VGG11Config: vgg,
    NiNConfig: nin,
    SeedExampleConfig: seed_example,
}
