"""Torch-style traversal of a jaxcnn model: ``named_modules``, ``named_children``,
``named_parameters``, ``named_buffers`` and their unnamed forms.

Names are torch's dotted state-dict prefixes (``'conv.0'``) and the order is torch's
registration order; the root module comes first with name ``''``. Nothing is bound or run:
the walk reads the module tree built by :mod:`jaxcnn.models`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn

from .layers import Layer, Sequential, TorchVar


def named_children(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The direct submodules with their names, one level, in order."""
    if isinstance(module, Sequential):
        for layer in module.layers:
            yield layer.name, layer
        return
    for field in dataclasses.fields(module):
        if field.name in ("parent", "name"):
            continue
        value = getattr(module, field.name)
        if isinstance(value, nn.Module):
            yield field.name, value


def children(module: nn.Module) -> Iterator[nn.Module]:
    for _, m in named_children(module):
        yield m


def named_modules(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Every module, the root first (name ``''``), then depth-first in order, as torch."""
    yield prefix, module
    for name, child in named_children(module):
        yield from named_modules(child, f"{prefix}.{name}" if prefix else name)


def modules(module: nn.Module) -> Iterator[nn.Module]:
    for _, m in named_modules(module):
        yield m


def torch_variables(module: nn.Module) -> Iterator[tuple[str, tuple[str, ...], TorchVar]]:
    """``(torch key, Flax path, TorchVar)`` for every variable, in torch's state-dict order.

    The Flax path starts with the collection: ``('params', 'conv', '0', 'kernel')``.
    """
    for path, m in named_modules(module):
        if not isinstance(m, Layer):
            continue
        names = tuple(path.split(".")) if path else ()
        for var in m.torch_variables():
            key = f"{path}.{var.torch_name}" if path else var.torch_name
            yield key, (var.collection, *names, var.name), var


def get_path(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """``tree[path[0]][path[1]]...``; raises ``KeyError`` naming the whole path."""
    node: Any = tree
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError("/".join(path))
        node = node[part]
    return node


def _named(module: nn.Module, variables: Mapping[str, Any], collection: str
           ) -> Iterator[tuple[str, Any]]:
    for key, path, var in torch_variables(module):
        if var.collection == collection:
            yield key, get_path(variables, path)


def named_parameters(module: nn.Module, variables: Mapping[str, Any]
                     ) -> Iterator[tuple[str, Any]]:
    """``(torch name, array)`` for every parameter; arrays stay in the Flax layout."""
    yield from _named(module, variables, "params")


def parameters(module: nn.Module, variables: Mapping[str, Any]) -> Iterator[Any]:
    for _, a in named_parameters(module, variables):
        yield a


def named_buffers(module: nn.Module, variables: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """``(torch name, array)`` for every BatchNorm statistic (``running_mean``, ...)."""
    yield from _named(module, variables, "batch_stats")


def buffers(module: nn.Module, variables: Mapping[str, Any]) -> Iterator[Any]:
    for _, a in named_buffers(module, variables):
        yield a
