"""Dive into Deep Learning 5.11: ResNet in PyTorch, as the book writes it (ResNet-18 by
default; the stages come from the config)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jaxcnn.models import ResNetConfig

from ._registry import register_torch
from .d2l_ch5 import FlattenLayer, GlobalAvgPool2d


class Residual(nn.Module):
    """The book's ``Residual``."""

    def __init__(self, in_channels: int, out_channels: int, use_1x1conv: bool = False,
                 stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1,
                               stride=stride)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return F.relu(Y + X)


def resnet_block(in_channels: int, out_channels: int, num_residuals: int,
                 first_block: bool = False) -> nn.Sequential:
    if first_block:
        assert in_channels == out_channels  # the first block keeps its channels
    blk: list[nn.Module] = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(in_channels, out_channels, use_1x1conv=True, stride=2))
        else:
            blk.append(Residual(out_channels, out_channels))
    return nn.Sequential(*blk)


@register_torch("resnet18")
def resnet18(cfg: ResNetConfig) -> nn.Sequential:
    """Ch. 5.11 ResNet-18 (``cfg.blocks_per_stage`` Residuals of ``cfg.channels`` per stage)."""
    c0 = cfg.channels[0]
    net = nn.Sequential(
        nn.Conv2d(cfg.in_channels, c0, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(c0), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    prev = c0
    for i, (n, c) in enumerate(zip(cfg.blocks_per_stage, cfg.channels, strict=True), start=1):
        net.add_module(f"resnet_block{i}", resnet_block(prev, c, n, first_block=i == 1))
        prev = c
    net.add_module("global_avg_pool", GlobalAvgPool2d())  # output (Batch, C, 1, 1)
    net.add_module("fc", nn.Sequential(FlattenLayer(), nn.Linear(prev, cfg.num_classes)))
    return net
