"""Dive into Deep Learning 5.12: DenseNet in PyTorch, as the book writes it (including its
``DenseBlosk_%d`` module names)."""

from __future__ import annotations

import torch
from torch import nn

from jaxcnn.models import DenseNetConfig

from ._registry import register_torch
from .d2l_ch5 import FlattenLayer, GlobalAvgPool2d


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    blk = nn.Sequential(nn.BatchNorm2d(in_channels),
                        nn.ReLU(),
                        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
    return blk


class DenseBlock(nn.Module):
    """The book's ``DenseBlock``."""

    def __init__(self, num_convs: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        net = []
        for i in range(num_convs):
            in_c = in_channels + i * out_channels
            net.append(conv_block(in_c, out_channels))
        self.net = nn.ModuleList(net)
        self.out_channels = in_channels + num_convs * out_channels  # output channels

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            Y = blk(X)
            X = torch.cat((X, Y), dim=1)  # concatenate input and output on the channels
        return X


def transition_block(in_channels: int, out_channels: int) -> nn.Sequential:
    blk = nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2))
    return blk


@register_torch("densenet")
def densenet(cfg: DenseNetConfig) -> nn.Sequential:
    """Ch. 5.12 DenseNet."""
    net = nn.Sequential(
        nn.Conv2d(cfg.in_channels, cfg.num_channels, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(cfg.num_channels),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    num_channels, growth_rate = cfg.num_channels, cfg.growth_rate
    num_convs_in_dense_blocks = cfg.num_convs
    for i, num_convs in enumerate(num_convs_in_dense_blocks):
        DB = DenseBlock(num_convs, num_channels, growth_rate)
        net.add_module("DenseBlosk_%d" % i, DB)  # noqa: UP031  (the book's spelling)
        num_channels = DB.out_channels  # output channels of the previous dense block
        if i != len(num_convs_in_dense_blocks) - 1:
            # transition layer between dense blocks: halve the channels
            net.add_module("transition_block_%d" % i,  # noqa: UP031
                           transition_block(num_channels, num_channels // 2))
            num_channels = num_channels // 2
    net.add_module("BN", nn.BatchNorm2d(num_channels))
    net.add_module("relu", nn.ReLU())
    net.add_module("global_avg_pool", GlobalAvgPool2d())  # output (Batch, num_channels, 1, 1)
    net.add_module("fc", nn.Sequential(FlattenLayer(), nn.Linear(num_channels, cfg.num_classes)))
    return net
