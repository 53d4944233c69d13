"""The models, one module per family, each builder registered (:mod:`jaxcnn.registry`) where it
is defined; ``create_model`` builds any of them by name."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from ..registry import get_spec, list_models, make_config, spec_of_config, validate_config
from .d2l_ch5 import (
    VGG11_ARCH,
    AlexNetConfig,
    ConvThenFC,
    LeNetBNConfig,
    LeNetConfig,
    NiNConfig,
    VGG11Config,
    VGGConfig,
    alexnet,
    lenet,
    lenet_bn,
    nin,
    nin_block,
    vgg,
    vgg11,
    vgg_block,
)
from .densenet import (
    DenseBlock,
    DenseNetConfig,
    conv_block,
    dense_block,
    densenet,
    transition_block,
)
from .googlenet import GoogLeNetConfig, Inception, googlenet, inception
from .resnet import Residual, ResNetConfig, residual, resnet18, resnet_block
from .seed_example import SeedExample, SeedExampleConfig, seed_example


def build_model(config: Any) -> nn.Module:
    """The Flax model of a registered config dataclass instance (checked by
    :func:`~jaxcnn.registry.validate_config`: ``num_classes``, ``in_channels``, ... >= 1)."""
    return spec_of_config(config).build(validate_config(config))


def create_model(name: str, **config: Any) -> nn.Module:
    """Build the registered model ``name`` with config overrides.

    Example: ``create_model('vgg11', ratio=8)``. Inputs are NHWC; ``model.init(key, x,
    train=False)`` gives ``{'params', 'batch_stats'}`` (the latter for BatchNorm models).
    """
    return build_model(make_config(name, **config))


def input_shape(name: str, batch: int = 1, **config: Any) -> tuple[int, int, int, int]:
    """The NHWC input shape ``(batch, H, W, in_channels)`` that model ``name`` is built for."""
    cfg = make_config(name, **config)
    size = get_spec(name).input_size
    return (batch, size, size, cfg.in_channels)


__all__ = [
    "VGG11_ARCH",
    "AlexNetConfig",
    "ConvThenFC",
    "DenseBlock",
    "DenseNetConfig",
    "GoogLeNetConfig",
    "Inception",
    "LeNetBNConfig",
    "LeNetConfig",
    "NiNConfig",
    "ResNetConfig",
    "Residual",
    "SeedExample",
    "SeedExampleConfig",
    "VGG11Config",
    "VGGConfig",
    "alexnet",
    "build_model",
    "conv_block",
    "create_model",
    "dense_block",
    "densenet",
    "googlenet",
    "inception",
    "input_shape",
    "lenet",
    "lenet_bn",
    "list_models",
    "nin",
    "nin_block",
    "residual",
    "resnet18",
    "resnet_block",
    "seed_example",
    "transition_block",
    "vgg",
    "vgg11",
    "vgg_block",
]
