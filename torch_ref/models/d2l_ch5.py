"""Dive into Deep Learning, chapter 5 (LeNet .. NiN) in PyTorch, with the book's module
structure and state-dict names."""

from __future__ import annotations

import torch
from torch import nn

from jaxcnn.models import (
    AlexNetConfig,
    LeNetBNConfig,
    LeNetConfig,
    NiNConfig,
    VGG11Config,
    VGGConfig,
)

from ._registry import register_torch


class FlattenLayer(nn.Module):
    """The book's ``d2l.FlattenLayer``: ``x.view(N, -1)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1)


class GlobalAvgPool2d(nn.Module):
    """The book's ``GlobalAvgPool2d``: average over the whole feature map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x, kernel_size=x.size()[2:])


def batch_norm(is_training: bool, X: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
               moving_mean: torch.Tensor, moving_var: torch.Tensor, eps: float,
               momentum: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The book's ``batch_norm`` function (ch. 5.10)."""
    if not is_training:
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        assert len(X.shape) in (2, 4)
        if len(X.shape) == 2:
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)
        else:
            mean = X.mean(dim=0, keepdim=True).mean(dim=2, keepdim=True).mean(dim=3, keepdim=True)
            var = ((X - mean) ** 2).mean(dim=0, keepdim=True).mean(
                dim=2, keepdim=True).mean(dim=3, keepdim=True)
        X_hat = (X - mean) / torch.sqrt(var + eps)
        moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
        moving_var = momentum * moving_var + (1.0 - momentum) * var
    Y = gamma * X_hat + beta
    return Y, moving_mean, moving_var


class BatchNorm(nn.Module):
    """The book's hand-written ``BatchNorm(num_features, num_dims)``.

    One change: ``moving_mean``/``moving_var`` are registered buffers (the book keeps plain
    attributes), so they are in the state dict and move with ``.to()``; their updates are
    detached from the autograd graph.
    """

    def __init__(self, num_features: int, num_dims: int) -> None:
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.num_features, self.num_dims = num_features, num_dims
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.zeros(shape))

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, num_dims={self.num_dims}"

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y, moving_mean, moving_var = batch_norm(
            self.training, X, self.gamma, self.beta, self.moving_mean, self.moving_var,
            eps=1e-5, momentum=0.9)
        if self.training:
            self.moving_mean = moving_mean.detach()
            self.moving_var = moving_var.detach()
        return Y


@register_torch("lenet")
class LeNet(nn.Module):
    """Ch. 5.5 ``LeNet``."""

    def __init__(self, cfg: LeNetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or LeNetConfig()
        self.conv = nn.Sequential(
            nn.Conv2d(cfg.in_channels, 6, 5), nn.Sigmoid(), nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.MaxPool2d(2, 2),
        )
        self.fc = nn.Sequential(
            nn.Linear(16 * 4 * 4, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(),
            nn.Linear(84, cfg.num_classes),
        )

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        feature = self.conv(img)
        return self.fc(feature.view(img.shape[0], -1))


@register_torch("alexnet")
class AlexNet(nn.Module):
    """Ch. 5.6 ``AlexNet``."""

    def __init__(self, cfg: AlexNetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or AlexNetConfig()
        self.conv = nn.Sequential(
            nn.Conv2d(cfg.in_channels, 96, 11, 4), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(96, 256, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 384, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(384, 384, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(3, 2),
        )
        self.fc = nn.Sequential(
            nn.Linear(256 * 5 * 5, 4096), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(4096, cfg.num_classes),
        )

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        feature = self.conv(img)
        return self.fc(feature.view(img.shape[0], -1))


@register_torch("lenet_bn")
def lenet_bn(cfg: LeNetBNConfig) -> nn.Sequential:
    """Ch. 5.10: ``nn.BatchNorm`` (``bn='torch'``) or the book's ``BatchNorm`` (``'scratch'``)."""
    if cfg.bn == "torch":
        bn2, bn1 = nn.BatchNorm2d, nn.BatchNorm1d
    else:
        def bn2(c: int) -> nn.Module:
            return BatchNorm(c, num_dims=4)

        def bn1(c: int) -> nn.Module:
            return BatchNorm(c, num_dims=2)

    return nn.Sequential(
        nn.Conv2d(cfg.in_channels, 6, 5), bn2(6), nn.Sigmoid(), nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, 5), bn2(16), nn.Sigmoid(), nn.MaxPool2d(2, 2),
        FlattenLayer(),
        nn.Linear(16 * 4 * 4, 120), bn1(120), nn.Sigmoid(),
        nn.Linear(120, 84), bn1(84), nn.Sigmoid(),
        nn.Linear(84, cfg.num_classes),
    )


def vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    blk: list[nn.Module] = []
    for i in range(num_convs):
        blk.append(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels,
                             kernel_size=3, padding=1))
        blk.append(nn.ReLU())
    blk.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*blk)


@register_torch("vgg11")
def vgg11(cfg: VGG11Config) -> nn.Sequential:
    """VGG-11 (:func:`vgg` of ``cfg.to_vgg()``)."""
    return vgg(cfg.to_vgg())


@register_torch("vgg")
def vgg(cfg: VGGConfig) -> nn.Sequential:
    """Ch. 5.7 ``vgg(conv_arch, fc_features, fc_hidden_units)``."""
    net = nn.Sequential()
    for i, (num_convs, in_channels, out_channels) in enumerate(cfg.conv_arch):
        net.add_module("vgg_block_" + str(i + 1), vgg_block(num_convs, in_channels, out_channels))
    hidden = cfg.fc_hidden_units
    net.add_module("fc", nn.Sequential(
        FlattenLayer(),
        nn.Linear(cfg.fc_features, hidden), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(hidden, cfg.num_classes),
    ))
    return net


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int,
              padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
    )


@register_torch("nin")
def nin(cfg: NiNConfig) -> nn.Sequential:
    """Ch. 5.8 NiN."""
    return nn.Sequential(
        nin_block(cfg.in_channels, 96, kernel_size=11, stride=4, padding=0),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nin_block(96, 256, kernel_size=5, stride=1, padding=2),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nin_block(256, 384, kernel_size=3, stride=1, padding=1),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Dropout(0.5),
        nin_block(384, cfg.num_classes, kernel_size=3, stride=1, padding=1),
        GlobalAvgPool2d(),
        FlattenLayer(),
    )
