"""The model registry shared by ``jaxcnn`` and ``torch_ref``.

A registered model is a name, a frozen dataclass of its configuration and the input size it is
built for. ``jaxcnn`` and ``torch_ref`` each map the config class to a builder, so both
frameworks build the same model from the same data. This module imports neither framework.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from typing import Any, Literal

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


@dataclasses.dataclass(frozen=True)
class SeedExampleConfig:
    """The seed notes' ``modules()`` example ``Model``: conv1, conv2 (3x3), maxpool1 (2x2), then
    ``features = Sequential(OrderedDict(conv3, conv4, relu1))``. No classifier head: the output
    is a feature map, ``(N, 128, 10, 10)`` for a 32x32 input."""

    in_channels: int = 3


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
      name: registry name.
      config: the frozen dataclass of its configuration.
      input_size: H = W of the input its default config is built for.
      description: one line for listings.
      test_cases: ``(config overrides, input size)`` pairs that the test suites run; the first
        is the default config.
      classifier: whether the output is ``(N, num_classes)`` logits (a cross-entropy applies);
        False for a model that returns a feature map.
    """

    name: str
    config: type
    input_size: int
    description: str
    test_cases: tuple[tuple[dict[str, Any], int], ...]
    classifier: bool = True


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    """Names of every registered model, in registration order."""
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; an unknown name raises ``KeyError`` with suggestions."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(
            f"unknown model {name!r}.{hint} Registered: {', '.join(_REGISTRY)}"
        ) from None


def make_config(name: str, **overrides: Any) -> Any:
    """The config dataclass of ``name`` with ``overrides``; an unknown key is named in the error."""
    spec = get_spec(name)
    fields = [f.name for f in dataclasses.fields(spec.config)]
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        raise TypeError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; it takes "
            f"{', '.join(fields)}"
        )
    return spec.config(**overrides)


_SMALL_VGG = {"conv_arch": ((1, 1, 8), (2, 8, 16)), "fc_features": 16 * 7 * 7,
              "fc_hidden_units": 32}

for _spec in (
    ModelSpec("lenet", LeNetConfig, 28, "LeNet (ch. 5.5)", (({}, 28),)),
    ModelSpec("lenet_bn", LeNetBNConfig, 28, "LeNet with BatchNorm (ch. 5.10)",
              (({"bn": "torch"}, 28), ({"bn": "scratch"}, 28))),
    ModelSpec("alexnet", AlexNetConfig, 224, "AlexNet (ch. 5.6)", (({}, 224),)),
    ModelSpec("vgg11", VGG11Config, 224, "VGG-11, widths divided by ratio (ch. 5.7)",
              (({"ratio": 8}, 224),)),
    ModelSpec("vgg", VGGConfig, 224, "VGG with any conv_arch (ch. 5.7)", ((_SMALL_VGG, 28),)),
    ModelSpec("nin", NiNConfig, 224, "Network in Network (ch. 5.8)", (({}, 224),)),
    ModelSpec("seed_example", SeedExampleConfig, 32,
              "The seed notes' modules() example (feature map, no classifier)", (({}, 32),),
              classifier=False),
):
    register(_spec)
