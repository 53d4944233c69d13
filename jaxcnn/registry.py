"""The model registry shared by ``jaxcnn`` and ``torch_ref``.

A model is registered where it is defined: :func:`register_model` decorates its jaxcnn builder
(``config -> flax module``) and records its name, the frozen dataclass of its configuration and
the input size it is built for. ``torch_ref`` registers the torch twin under the same name
(``torch_ref.models.register_torch``), so both frameworks build the same model from the same
config. This module imports neither framework.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any, TypeVar

Builder = TypeVar("Builder", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
      name: registry name.
      config: the frozen dataclass of its configuration.
      input_size: H = W of the input its default config is built for.
      description: one line for listings.
      build: the jaxcnn builder, ``config -> flax.linen.Module`` (NHWC input).
      classifier: whether the output is ``(N, num_classes)`` logits (a cross-entropy applies);
        False for a model that returns a feature map.
    """

    name: str
    config: type
    input_size: int
    description: str
    build: Callable[[Any], Any]
    classifier: bool = True


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, config: type, *, input_size: int, description: str,
                   classifier: bool = True) -> Callable[[Builder], Builder]:
    """Decorator registering a jaxcnn builder ``config -> module`` under ``name``."""

    def decorator(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, config, input_size, description, build, classifier)
        return build

    return decorator


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


def spec_of_config(config: Any) -> ModelSpec:
    """The spec whose config class is ``type(config)``."""
    for spec in _REGISTRY.values():
        if type(config) is spec.config:
            return spec
    raise TypeError(f"no registered model takes a config of type {type(config).__name__}")


def _positive_ints(value: Any) -> bool:
    if isinstance(value, tuple | list):
        return all(_positive_ints(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate_config(config: Any) -> Any:
    """Check a model config: every field whose default is a whole number (``num_classes``,
    ``in_channels``, ``ratio``, widths, ...) or a tuple of them (``conv_arch``, block counts)
    must hold positive whole numbers. Returns ``config``; raises ValueError naming the field."""
    name = spec_of_config(config).name
    for field in dataclasses.fields(config):
        default, value = field.default, getattr(config, field.name)
        if default is dataclasses.MISSING or isinstance(default, bool):
            continue
        if (isinstance(default, int | tuple) and not isinstance(default, str)
                and _positive_ints(default) and not _positive_ints(value)):
            what = "a positive whole number" if isinstance(default, int) else \
                "a tuple of positive whole numbers"
            raise ValueError(f"model {name!r}: {field.name} must be {what}, got {value!r}")
    return config


def make_config(name: str, **overrides: Any) -> Any:
    """The config dataclass of ``name`` with ``overrides``; an unknown key is named in the
    error, a bad value (:func:`validate_config`) too."""
    spec = get_spec(name)
    fields = [f.name for f in dataclasses.fields(spec.config)]
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        raise TypeError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; it takes "
            f"{', '.join(fields)}"
        )
    return validate_config(spec.config(**overrides))
