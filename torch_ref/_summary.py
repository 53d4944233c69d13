"""Forward-hook listings of a torch model: per-module output shapes and recorded activations."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from jaxcnn.inspect import Summary, SummaryRow


@dataclasses.dataclass
class Call:
    """One module call seen by a forward hook: torch name, module, first input and output."""

    name: str
    module: nn.Module
    input: torch.Tensor
    output: torch.Tensor


@contextmanager
def record_calls(model: nn.Module, *, leaves_only: bool = False, retain_grad: bool = False
                 ) -> Iterator[list[Call]]:
    """Within the block, each forward call of a submodule (the model itself named ``''``)
    appends a :class:`Call` to the yielded list, in the order calls return. ``retain_grad``
    keeps ``.grad`` on every recorded input and output after ``backward()``. Hooks registered
    before entering (e.g. :func:`torch_ref.fixed_dropout_masks`) have already run on the
    output."""
    calls: list[Call] = []
    handles = []

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0] if inputs else None
            if retain_grad:
                for t in (x, output):
                    if isinstance(t, torch.Tensor) and t.requires_grad and not t.is_leaf:
                        t.retain_grad()
            calls.append(Call(name, module, x, output))

        return hook

    for name, module in model.named_modules():
        if leaves_only and next(module.children(), None) is not None:
            continue
        handles.append(module.register_forward_hook(hook_for(name)))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def summary(model: nn.Module, input_shape: Sequence[int], *, depth: int | None = 1,
            title: str | None = None) -> Summary:
    """Torch's side of :func:`jaxcnn.inspect.summary`: run ``model`` in eval mode on zeros of
    ``input_shape`` (NCHW) and list every module (``named_modules()`` order, the model left out)
    with its output shape (from a forward hook) and ``sum(p.numel())``."""
    shape = tuple(int(d) for d in input_shape)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with record_calls(model) as calls, torch.no_grad():
            out = model(torch.zeros(shape, device=device))
    finally:
        model.train(was_training)
    shapes = {c.name: tuple(c.output.shape) for c in calls if isinstance(c.output, torch.Tensor)}
    rows = tuple(
        SummaryRow(name, type(m).__name__, shapes.get(name),
                   sum(p.numel() for p in m.parameters()))
        for name, m in model.named_modules()
        if name and (depth is None or name.count(".") < depth)
    )
    return Summary(title or type(model).__name__, shape, "NCHW", rows,
                   sum(p.numel() for p in model.parameters()), tuple(out.shape))
