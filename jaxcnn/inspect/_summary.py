"""Layer-by-layer shape summary of a jaxcnn model, with torch's names, types and layout."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..traversal import named_modules, torch_variables
from ._repr import torch_type

LAYOUTS = ("NCHW", "NHWC")


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """One module: torch name (``'0'``, ``'conv.3'``), torch type, output shape in the summary's
    layout (None if the forward never called it) and its parameter count (own and nested)."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    params: int

    @property
    def depth(self) -> int:
        """1 for a child of the model, 2 for a grandchild, ..."""
        return self.name.count(".") + 1


@dataclasses.dataclass(frozen=True)
class Summary:
    """Rows in torch's ``named_modules()`` order (the model itself left out); ``str()`` renders
    a table, :meth:`shape_lines` the seed notes' ``0 output shape:  (1, 96, 54, 54)`` lines."""

    model: str
    input_shape: tuple[int, ...]
    layout: str
    rows: tuple[SummaryRow, ...]
    total_params: int
    output_shape: tuple[int, ...]

    def shape_lines(self) -> list[str]:
        return [f"{r.name} output shape:  {r.output_shape}" for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        head = ("name", "type", "output shape", "params")
        body = [("  " * (r.depth - 1) + r.name, r.type,
                 "-" if r.output_shape is None else str(r.output_shape), f"{r.params:,}")
                for r in self.rows]
        widths = [max(len(line[i]) for line in [head, *body]) for i in range(4)]

        def fmt(line: Sequence[str]) -> str:
            cells = [c.ljust(w) for c, w in zip(line[:3], widths, strict=False)]
            return "  ".join([*cells, line[3].rjust(widths[3])]).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([
            f"{self.model}: input {self.input_shape} ({self.layout})",
            fmt(head), rule, *map(fmt, body), rule,
            f"total params: {self.total_params:,}",
            f"output shape: {self.output_shape}",
        ])


def count_params(module: nn.Module) -> int:
    """Number of parameters of ``module`` and its submodules, as torch's
    ``sum(p.numel() for p in module.parameters())`` (BatchNorm statistics excluded)."""
    return sum(math.prod(var.shape) for _, _, var in torch_variables(module)
               if var.collection == "params")


@contextmanager
def intercept_calls(fn: Callable[[str, nn.Module, tuple, dict, Callable], Any]
                    ) -> Iterator[None]:
    """Within the block, every submodule ``__call__`` (model included) goes through
    ``fn(torch_name, module, args, kwargs, call) -> output`` where ``call(*args, **kwargs)``
    runs the module; calls run in execution order (a container returns after its children)."""

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or context.module.scope is None:
            return next_fun(*args, **kwargs)
        name = ".".join(context.module.scope.path)
        return fn(name, context.module, args, kwargs, next_fun)

    with nn.intercept_methods(interceptor):
        yield


def to_layout(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    """An NHWC shape as the layout asks (NCHW: ``(N, C, H, W)``); other ranks unchanged."""
    shape = tuple(int(d) for d in shape)
    if layout == "NCHW" and len(shape) == 4:
        n, h, w, c = shape
        return (n, c, h, w)
    return shape


def _nhwc_input(input_shape: Sequence[int], layout: str) -> tuple[int, ...]:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be 4 positive sizes ({layout}), got {input_shape!r}")
    if layout == "NCHW":
        n, c, h, w = shape
        return (n, h, w, c)
    return shape


def summary(model: nn.Module, input_shape: Sequence[int], *, layout: str = "NCHW",
            depth: int | None = 1, title: str | None = None) -> Summary:
    """Per-module output shapes and parameter counts of ``model`` for an input of
    ``input_shape`` (in ``layout``; NCHW like torch by default), without computing anything
    (shapes are traced with :func:`jax.eval_shape`).

    ``depth=1`` lists the model's children (NiN: ``0`` ... ``9``), ``depth=2`` their children
    too, ``None`` every module. Output shapes are reported in ``layout``. ``title`` names the
    model in the table's first line (default: its torch class name).
    """
    x_shape = _nhwc_input(input_shape, layout)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, module: nn.Module, args: tuple, kwargs: dict, call: Callable) -> Any:
        out = call(*args, **kwargs)
        if hasattr(out, "shape"):
            shapes[name] = tuple(out.shape)
        return out

    def init(key: jax.Array, x: jax.Array) -> Any:
        with intercept_calls(record):
            return model.init_with_output(key, x, train=False)[0]

    out = jax.eval_shape(init, jax.random.key(0), jax.ShapeDtypeStruct(x_shape, jnp.float32))
    rows = tuple(
        SummaryRow(name, torch_type(m),
                   to_layout(shapes[name], layout) if name in shapes else None, count_params(m))
        for name, m in named_modules(model)
        if name and (depth is None or name.count(".") < depth)
    )
    return Summary(title or torch_type(model), tuple(int(d) for d in input_shape), layout, rows,
                   count_params(model), to_layout(out.shape, layout))
