"""The torch side of the shared registry: each torch builder registered under the jaxcnn name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from jaxcnn.registry import get_spec, make_config, spec_of_config

Builder = TypeVar("Builder", bound=Callable[..., Any])

#: registry name -> torch builder ``config -> nn.Module``.
TORCH_BUILDERS: dict[str, Callable[[Any], nn.Module]] = {}


def register_torch(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering the torch twin of the jaxcnn model ``name`` (already registered)."""

    def decorator(build: Builder) -> Builder:
        get_spec(name)  # the jaxcnn model must exist
        if name in TORCH_BUILDERS:
            raise ValueError(f"torch model {name!r} is already registered")
        TORCH_BUILDERS[name] = build
        return build

    return decorator


def build_model(config: Any) -> nn.Module:
    """The torch model of a registered config dataclass instance (NCHW input)."""
    name = spec_of_config(config).name
    try:
        build = TORCH_BUILDERS[name]
    except KeyError:
        raise TypeError(f"model {name!r} has no torch_ref twin") from None
    return build(config)


def create_model(name: str, **config: Any) -> nn.Module:
    """Build the torch twin of the registered model ``name`` (NCHW input)."""
    return build_model(make_config(name, **config))
