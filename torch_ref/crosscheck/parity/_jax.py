"""The jaxcnn side of a parity run: every module call's input and output in forward order
(leaves, containers and graph modules such as an Inception), and optionally the cotangents
there, from one jitted forward (or forward-and-backward)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxcnn.inspect import get_module, intercept_calls
from jaxcnn.traversal import named_children, named_modules


@dataclasses.dataclass
class JaxRun:
    """What :func:`run_jax` saw. Arrays are numpy, NHWC as jaxcnn computes them.

    Attributes:
      acts: ``{torch name: (input, output)}`` of every module call that ran (the model itself
        left out), in the order calls return; a module's second call is ``name#1``, etc.
      state: the updated ``batch_stats`` and the ``dropout_masks`` drawn (train mode).
      failure: ``(torch name, exception)`` if the forward raised (``acts`` then holds the layers
        before it).
      loss, param_grads, grads: with an objective, its value, the gradient tree of ``params``
        and ``{torch name: (cotangent of the input, cotangent of the output)}``: the output's
        over all its uses, the input's for this call's use only (an Inception's input feeds four
        paths; each path's first layer gets its own share).
    """

    acts: dict[str, tuple[np.ndarray, np.ndarray]]
    state: dict[str, Any]
    failure: tuple[str, BaseException] | None = None
    loss: float | None = None
    param_grads: Any = None
    grads: dict[str, tuple[np.ndarray, np.ndarray]] | None = None


def leaf_names(model: nn.Module) -> set[str]:
    """Torch names of the modules without children."""
    return {n for n, m in named_modules(model) if n and not any(True for _ in named_children(m))}


def call_key(name: str, seen: dict[str, int]) -> str:
    """``name`` for a module's first call, ``name#k`` for its (k+1)-th; counts in ``seen``."""
    k = seen.get(name, 0)
    seen[name] = k + 1
    return name if k == 0 else f"{name}#{k}"


def base_name(key: str) -> str:
    """The module name of a call key (``name#k`` -> ``name``)."""
    return key.split("#", 1)[0]


def run_jax(model: nn.Module, variables: Mapping[str, Any], x: Any, *, train: bool,
            key: jax.Array, objective: Callable[[jax.Array], jax.Array] | None = None
            ) -> JaxRun:
    """Run ``model`` on NHWC ``x`` (train mode: batch statistics, dropout masks from ``key``,
    recorded), recording each module call's input and output; with ``objective`` (model output
    -> scalar) also its gradients, through a zero perturbation added to each call's input (this
    call's use only) and output (every use). Shapes are traced first: a forward that raises is
    re-run eagerly so that the layers before the failure keep their values."""
    failure: list[tuple[str, BaseException]] = []

    def forward(params: Any, deltas: Any, acts: dict[str, Any]) -> tuple[Any, dict]:
        seen: dict[str, int] = {}

        def hook(name: str, module: nn.Module, args: tuple, kwargs: dict, call: Any) -> Any:
            if not name:  # the model itself
                return call(*args, **kwargs)
            key = call_key(name, seen)
            xin = args[0]
            if deltas is not None and key in deltas:
                xin = xin + deltas[key][0]
            try:
                out = call(xin, *args[1:], **kwargs)
            except Exception as e:
                if not failure:
                    failure.append((name, e))
                raise
            if deltas is not None and key in deltas:
                out = out + deltas[key][1]
            acts[key] = (xin, out)
            return out

        v = {**variables, "params": params}
        state: Any = {}
        with intercept_calls(hook):
            if train:
                out, state = model.apply(v, x, train=True, rngs={"dropout": key},
                                         mutable=["batch_stats", "dropout_masks"])
            else:
                out = model.apply(v, x, train=False)
        return out, dict(state)

    def traced(params: Any, deltas: Any) -> tuple[Any, dict, dict]:
        acts: dict[str, Any] = {}
        out, state = forward(params, deltas, acts)
        return out, state, acts

    params = variables["params"]
    try:
        _, _, shapes = jax.eval_shape(traced, params, None)
    except Exception:
        failure.clear()
        acts: dict[str, Any] = {}
        try:
            forward(params, None, acts)
        except Exception as e:
            if not failure:
                failure.append(("", e))
        return JaxRun(_to_numpy(acts), {}, failure[0] if failure else None)

    if objective is None:
        _, state, acts = jax.jit(traced)(params, None)
        return JaxRun(_to_numpy(acts), state)

    def loss_fn(params: Any, deltas: Any) -> tuple[jax.Array, tuple[dict, dict]]:
        out, state, acts = traced(params, deltas)
        return objective(out), (state, acts)

    deltas = {n: tuple(np.zeros(s.shape, s.dtype) for s in pair) for n, pair in shapes.items()}
    (loss, (state, acts)), (g_params, g_deltas) = jax.jit(
        jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(params, deltas)
    return JaxRun(_to_numpy(acts), state, None, float(loss), g_params, _to_numpy(g_deltas))


def _to_numpy(pairs: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {k: (np.asarray(a), np.asarray(b)) for k, (a, b) in pairs.items()}


def _subtree(tree: Mapping[str, Any] | None, path: tuple[str, ...]) -> Any:
    node: Any = tree
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def local_vjps(model: nn.Module, variables: Mapping[str, Any], masks: Mapping[str, Any] | None,
               train: bool, inputs: Mapping[str, np.ndarray],
               cotangents: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, Any]]:
    """Each named layer (a leaf or a graph module) alone, on the given input (NHWC), pulled
    back from the given output cotangent: ``{name: (cotangent of the input, gradient tree of
    the layer's params)}``.

    Fed torch's input and cotangent, this checks every layer's own backward independently of
    what happened before or after it (one jitted function for all of them)."""
    leaves = {name: get_module(model, base_name(name)) for name in inputs}
    fixed: dict[str, dict[str, Any]] = {}
    params: dict[str, Any] = {}
    for name in leaves:
        path = tuple(base_name(name).split("."))
        fixed[name] = {col: sub for col, tree in (("batch_stats", variables.get("batch_stats")),
                                                   ("dropout_masks", masks))
                       if (sub := _subtree(tree, path)) is not None}
        params[name] = _subtree(variables.get("params"), path) or {}

    def pullback(params: Any, inputs: Any, cotangents: Any) -> dict[str, Any]:
        out = {}
        for name, leaf in leaves.items():
            def apply(p: Any, x: jax.Array, leaf: nn.Module = leaf, name: str = name) -> Any:
                v = {**fixed[name], "params": p}
                if train:
                    return leaf.apply(v, x, train=True, mutable=["batch_stats"])[0]
                return leaf.apply(v, x, train=False)

            _, vjp = jax.vjp(apply, params[name], inputs[name])
            g_params, g_x = vjp(cotangents[name])
            out[name] = (g_x, g_params)
        return out

    result = jax.jit(pullback)(params, dict(inputs), dict(cotangents))
    return {k: (np.asarray(gx), gp) for k, (gx, gp) in result.items()}
