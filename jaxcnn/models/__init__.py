"""Model builders and ``create_model``; every model is in :mod:`jaxcnn.registry`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from ..registry import get_spec, list_models, make_config
from ._book import (
    BUILDERS,
    ConvThenFC,
    alexnet,
    lenet,
    lenet_bn,
    nin,
    nin_block,
    vgg,
    vgg_block,
)
from ._seed_example import SeedExample, seed_example


def build_model(config: Any) -> nn.Module:
    """The Flax model of a config dataclass instance from :mod:`jaxcnn.registry`."""
    try:
        builder = BUILDERS[type(config)]
    except KeyError:
        raise TypeError(f"no jaxcnn builder for config type {type(config).__name__}") from None
    return builder(config)


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
    "ConvThenFC", "SeedExample", "alexnet", "build_model", "create_model", "input_shape", "lenet",
    "lenet_bn", "list_models", "nin", "nin_block", "seed_example", "vgg", "vgg_block",
]
