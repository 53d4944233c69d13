"""Torch's containers: ``Sequential`` (children named ``'0'``, ``'1'``, ... or by key) and
``ModuleList``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import flax.linen as nn
import jax

from .base import Layer


class Sequential(Layer):
    """Calls its layers in order, passing ``train`` to each.

    Build it with :func:`sequential` (children named by index, like ``nn.Sequential(*layers)``)
    or :func:`named_sequential` (like ``nn.Sequential(OrderedDict(...))``), so the Flax variable
    tree has torch's names: ``{'conv': {'0': {'kernel': ...}}}`` is torch's ``conv.0.weight``.
    """

    layers: tuple[nn.Module, ...] = ()
    preserve_adopted_names = True  # keep the names given by sequential()/named_sequential()

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for layer in self.layers:
            x = layer(x, train=train)
        return x


def sequential(*layers: nn.Module) -> Sequential:
    """``nn.Sequential(*layers)``: children named ``'0'``, ``'1'``, ..."""
    return Sequential(layers=tuple(m.clone(name=str(i)) for i, m in enumerate(layers)))


def named_sequential(layers: Mapping[str, nn.Module]) -> Sequential:
    """``nn.Sequential(OrderedDict(layers))``: children named by the mapping's keys, in order."""
    return Sequential(layers=tuple(m.clone(name=k) for k, m in layers.items()))


class ModuleList(Sequential):
    """``nn.ModuleList(modules)``: holds its children under torch's names (``net.0``, ``net.1``,
    ...) for traversal, conversion and reprs, but has no forward of its own; the owner calls
    ``self.net.layers[i](x, train=train)`` itself (the book's ``DenseBlock``).

    A :class:`Sequential` subclass, so the traversal, ``replace_module`` and the repr treat it
    as the index-named container it is; it prints as ``ModuleList(...)``. Build it with
    :func:`module_list`.
    """

    torch_type: ClassVar[str] = "ModuleList"

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        raise NotImplementedError(
            "ModuleList has no forward (as torch's): call its layers one by one")


def module_list(*modules: nn.Module) -> ModuleList:
    """``nn.ModuleList(modules)``: children named ``'0'``, ``'1'``, ..."""
    return ModuleList(layers=tuple(m.clone(name=str(i)) for i, m in enumerate(modules)))
