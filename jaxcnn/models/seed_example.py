"""The seed notes' ``modules()`` example model, the registry's ``seed_example``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax

from ..layers import Conv2d, MaxPool2d, ReLU, Sequential, named_sequential
from ..registry import register_model


@dataclasses.dataclass(frozen=True)
class SeedExampleConfig:
    """The seed notes' ``modules()`` example ``Model``: conv1, conv2 (3x3), maxpool1 (2x2), then
    ``features = Sequential(OrderedDict(conv3, conv4, relu1))``. No classifier head: the output
    is a feature map, ``(N, 128, 10, 10)`` for a 32x32 input."""

    in_channels: int = 3


class SeedExample(nn.Module):
    """Children ``conv1``, ``conv2``, ``maxpool1`` and ``features`` (a named Sequential of
    ``conv3``, ``conv4``, ``relu1``), applied in that order; torch's class is ``Model``.

    ``(N, H, W, in_channels) -> (N, (H - 4) // 2 - 4, (W - 4) // 2 - 4, 128)``.
    """

    conv1: Conv2d
    conv2: Conv2d
    maxpool1: MaxPool2d
    features: Sequential

    torch_type: ClassVar[str] = "Model"

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = self.conv1(x, train=train)
        x = self.conv2(x, train=train)
        x = self.maxpool1(x, train=train)
        return self.features(x, train=train)


@register_model("seed_example", SeedExampleConfig, input_size=32,
                description="The seed notes' modules() example (feature map, no classifier)",
                classifier=False)
def seed_example(cfg: SeedExampleConfig) -> SeedExample:
    """The seed's ``Model()`` with ``in_channels`` input channels (3 in the notes)."""
    return SeedExample(
        conv1=Conv2d(cfg.in_channels, 64, 3),
        conv2=Conv2d(64, 64, 3),
        maxpool1=MaxPool2d(2, 2),
        features=named_sequential({
            "conv3": Conv2d(64, 128, 3),
            "conv4": Conv2d(128, 128, 3),
            "relu1": ReLU(),
        }),
    )
