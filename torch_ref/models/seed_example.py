"""The seed notes' ``modules()`` example, verbatim: ``Model`` with a named ``features``."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from jaxcnn.models import SeedExampleConfig

from ._registry import register_torch


@register_torch("seed_example")
class Model(nn.Module):
    """conv1, conv2, maxpool1, then ``features = Sequential(OrderedDict(conv3, conv4, relu1))``;
    ``(N, C, H, W) -> (N, 128, (H - 4) // 2 - 4, (W - 4) // 2 - 4)``."""

    def __init__(self, cfg: SeedExampleConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or SeedExampleConfig()
        self.conv1 = nn.Conv2d(in_channels=cfg.in_channels, out_channels=64, kernel_size=3)
        self.conv2 = nn.Conv2d(64, 64, 3)
        self.maxpool1 = nn.MaxPool2d(2, 2)
        self.features = nn.Sequential(OrderedDict([
            ("conv3", nn.Conv2d(64, 128, 3)),
            ("conv4", nn.Conv2d(128, 128, 3)),
            ("relu1", nn.ReLU()),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.maxpool1(x)
        return self.features(x)
