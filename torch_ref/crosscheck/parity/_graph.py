"""The report on graphs: which module calls get a row, the torch recorder, and the merge points.

A row goes to every leaf call and every call of a graph module (a module with children that is
not a container: the book's ``Inception``, ``Residual`` and ``DenseBlock``), in the order calls
return on the torch side (forward hooks; jaxcnn records by name with ``nn.intercept_methods``,
so neither side is assumed to be a chain). A graph module's row is its output: the concat of an
Inception, ``relu(Y + X)`` of a Residual (the residual sum), a DenseBlock's last concat. Merge
points that are no module output get rows of their own (:func:`plan_rows`): each Inception
path's output (``name[p1]`` ... ``name[p4]``, its channels of the concat, before the concat's
row) and each DenseBlock concat but the last (``name[catK]``, before the conv block reading it).

Gradients: a tensor used several times (an Inception's input feeds four paths, a Residual's the
shortcut) has one ``.grad`` in torch, the sum over all uses. The recorder gives every row
module's input a view of its own (a forward pre-hook), so the input cotangent compared is this
call's share on both sides (jaxcnn adds a zero to each call's input), and a module's own
backward (``local bwd``) is well defined; an output's cotangent is over all its uses on both
sides.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..._summary import Call
from ._jax import base_name, call_key
from ._report import LayerRow, compare

CONTAINERS = frozenset({"Sequential", "ModuleList", "ModuleDict"})


def is_row_module(kind: str, has_children: bool) -> bool:
    """Leaves and graph modules get rows; containers (Sequential, ...) do not."""
    return not has_children or kind not in CONTAINERS


def _row_module(m: torch.nn.Module) -> bool:
    return is_row_module(type(m).__name__, next(m.children(), None) is not None)


@dataclasses.dataclass
class Start:
    """A module call begins: its key and first input (as the module receives it)."""

    name: str
    input: Any


@contextlib.contextmanager
def record_graph(model: torch.nn.Module, *, grad: bool) -> Iterator[list[Call | Start]]:
    """Within the block, every call of a submodule appends a :class:`Start` when it begins and
    a :class:`torch_ref.Call` when it returns (keys ``name``, ``name#1``, ... for repeated
    calls). With ``grad``, each row module's input is replaced by a view of its own (so its
    ``.grad`` is this call's share) and every recorded input and output keeps its ``.grad``."""
    events: list[Call | Start] = []
    seen: dict[str, int] = {}
    open_keys: dict[str, list[str]] = {}
    handles = []

    def keep(t: Any) -> None:
        if grad and isinstance(t, torch.Tensor) and t.requires_grad and not t.is_leaf:
            t.retain_grad()

    def hooks(name: str, row: bool) -> tuple[Any, Any]:
        def pre(module: torch.nn.Module, args: tuple) -> tuple:
            key = call_key(name, seen)
            open_keys.setdefault(name, []).append(key)
            x = args[0] if args else None
            if grad and row and isinstance(x, torch.Tensor) and x.requires_grad:
                x = x.view_as(x)
                args = (x, *args[1:])
            keep(x)
            events.append(Start(key, x))
            return args

        def post(module: torch.nn.Module, args: tuple, output: Any) -> None:
            keep(output)
            events.append(Call(open_keys[name].pop(), module, args[0] if args else None,
                               output))

        return pre, post

    for name, module in model.named_modules():
        if not name:
            continue
        pre, post = hooks(name, _row_module(module))
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield events
    finally:
        for h in handles:
            h.remove()


@dataclasses.dataclass
class Merge:
    """A merge-point row: ``kind`` 'path' (channels ``lo:hi`` of call ``source``'s output) or
    'concat' (the input of call ``source``)."""

    name: str
    kind: str
    source: str
    lo: int = 0
    hi: int = 0


def _inception_paths(m: torch.nn.Module) -> list[int]:
    return [getattr(m, p).out_channels for p in ("p1_1", "p2_2", "p3_2", "p4_2")]


def plan_rows(events: list[Call | Start], tmods: dict[str, torch.nn.Module]
              ) -> list[Call | Merge]:
    """The report's rows in forward order: the calls of row modules, and the merge points."""
    out: list[Call | Merge] = []
    for ev in events:
        if isinstance(ev, Start):
            parent, _, idx = base_name(ev.name).rpartition(".")
            owner = parent.removesuffix(".net") if parent.endswith(".net") else None
            if (owner in tmods and type(tmods[owner]).__name__ == "DenseBlock"
                    and idx.isdigit() and int(idx) >= 1):
                out.append(Merge(f"{owner}[cat{int(idx) - 1}]", "concat", ev.name))
            continue
        if not _row_module(ev.module):
            continue
        if type(ev.module).__name__ == "Inception":
            lo = 0
            for k, c in enumerate(_inception_paths(ev.module), start=1):
                out.append(Merge(f"{ev.name}[p{k}]", "path", ev.name, lo, lo + c))
                lo += c
        out.append(ev)
    return out


def _nchw(a: Any) -> np.ndarray:
    a = np.asarray(a)
    return np.transpose(a, (0, 3, 1, 2)) if a.ndim == 4 else a


def _t(t: Any) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy()


def compare_merge(m: Merge, starts: dict[str, Start], calls: dict[str, Call], ctx: Any
                  ) -> LayerRow:
    """Compare a merge point: its value, and for an Inception path the cotangent of its
    channels (a slice of the concat's, over all uses). A DenseBlock concat feeds the next conv
    block and the next concat; jaxcnn's recorded cotangent there is one use's, so its row
    compares the value only (the concat's consumers are compared in full)."""
    run, rtol = ctx.run, ctx.rtol
    if m.kind == "path":
        t_val = calls[m.source].output
        j_pair = run.acts.get(m.source)
        j_val = None if j_pair is None else _nchw(j_pair[1])[:, m.lo:m.hi]
        t_grad = t_val.grad
        t_val = _t(t_val)[:, m.lo:m.hi]
        j_grad = None
        if run.grads is not None and m.source in run.grads:
            j_grad = _nchw(run.grads[m.source][1])[:, m.lo:m.hi]
        t_grad = None if t_grad is None else _t(t_grad)[:, m.lo:m.hi]
    else:
        t_val = _t(starts[m.source].input)
        j_pair = run.acts.get(m.source)
        j_val = None if j_pair is None else _nchw(j_pair[0])
        t_grad = j_grad = None
    row = LayerRow(m.name, m.kind, tuple(t_val.shape))
    if j_val is None:
        row.status = "missing"
        row.note = "not reached: jaxcnn failed earlier" if run.failure else "not run by jaxcnn"
        return row
    row.jax_shape = tuple(j_val.shape)
    row.activation = compare(j_val, t_val, rtol)
    if row.jax_shape != row.shape:
        row.status, row.note = "shape", f"jaxcnn gives {row.jax_shape}"
        return row
    if j_grad is not None:
        row.grad_out = compare(j_grad, np.zeros_like(j_grad) if t_grad is None else t_grad, rtol)
    row.status = ("over" if not row.activation.ok else
                  "drift" if row.grad_out is not None and not row.grad_out.ok else "ok")
    return row
