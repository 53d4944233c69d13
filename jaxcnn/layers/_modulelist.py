"""``ModuleList``: torch's list container, children named ``'0'``, ``'1'``, ..., never called."""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

from ._sequential import Sequential


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
