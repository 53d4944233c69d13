"""Torch-style printing of a jaxcnn model and surgery on its module tree."""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from ..layers import Layer, Sequential
from ..traversal import named_children


def torch_type(module: nn.Module) -> str:
    """The class name torch prints for ``module``: its ``torch_type`` attribute when it has one
    (``ConvThenFC`` is ``LeNet`` or ``AlexNet``), else its own class name."""
    name = getattr(module, "torch_type", None)
    return name if isinstance(name, str) and name else type(module).__name__


def _addindent(s: str, spaces: int) -> str:
    lines = s.split("\n")
    if len(lines) == 1:
        return s
    pad = " " * spaces
    return "\n".join([lines[0], *(pad + line for line in lines[1:])])


def torch_style_repr(model: nn.Module) -> str:
    """What ``print(torch_model)`` prints for the torch twin of ``model``: nested
    ``(name): Type(extra_repr)`` lines, two spaces per level (torch's ``Module.__repr__``)."""
    extra = model.extra_repr() if isinstance(model, Layer) else ""
    extra_lines = extra.split("\n") if extra else []
    child_lines = [f"({name}): {_addindent(torch_style_repr(child), 2)}"
                   for name, child in named_children(model)]
    lines = extra_lines + child_lines
    body = ""
    if lines:
        if len(extra_lines) == 1 and not child_lines:
            body = extra_lines[0]
        else:
            body = "\n  " + "\n  ".join(lines) + "\n"
    return f"{torch_type(model)}({body})"


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule with torch name ``name`` (``'conv.0'``); ``''`` is the model itself."""
    module = model
    for part in name.split(".") if name else ():
        found = dict(named_children(module))
        if part not in found:
            raise KeyError(f"{torch_type(module)} has no child {part!r} (looking up {name!r}); "
                           f"children: {', '.join(found) or 'none'}")
        module = found[part]
    return module


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """A copy of ``model`` whose submodule ``name`` (torch name) is ``new``.

    The variables keep their paths, so weights converted for ``model`` fit the copy as long as
    ``new`` has the same variable shapes. Example: a Conv2d with another padding,
    ``replace_module(m, 'conv.0', Conv2d(1, 6, 5, padding=1))``.
    """
    if not name:
        return new
    head, _, rest = name.partition(".")
    if isinstance(model, Sequential):
        names = [layer.name for layer in model.layers]
        if head not in names:
            raise KeyError(f"Sequential has no child {head!r}; children: {', '.join(names)}")
        layers = tuple(
            replace_module(layer, rest, new).clone(name=layer.name) if layer.name == head
            else layer
            for layer in model.layers
        )
        return model.clone(layers=layers)
    fields = {f.name for f in dataclasses.fields(model)} - {"parent", "name"}
    child = getattr(model, head, None) if head in fields else None
    if not isinstance(child, nn.Module):
        raise KeyError(f"{torch_type(model)} has no child {head!r}")
    return model.clone(**{head: replace_module(child, rest, new)})
