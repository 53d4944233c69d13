"""Run a registered model in torch_ref and jaxcnn on the same weights and input, layer by
layer (:func:`parity_report`), and judge each torch leaf call against jaxcnn's
(:func:`compare_row`)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxcnn.convert import (
    StateDictError,
    dropout_masks_to_torch,
    from_torch_state_dict,
    load_safetensors,
    to_torch_state_dict,
)
from jaxcnn.inspect import torch_type
from jaxcnn.models import build_model
from jaxcnn.registry import get_spec, make_config
from jaxcnn.testing import DEFAULT_RTOL
from jaxcnn.traversal import get_path, named_children, named_modules, torch_variables

from ...dropout import fixed_dropout_masks
from ...models import build_model as build_torch_model
from ._config import compare_configs
from ._graph import Merge, Start, compare_merge, is_row_module, plan_rows, record_graph
from ._jax import JaxRun, base_name, local_vjps, run_jax
from ._report import LayerRow, ParityReport, compare, explained_by_ties, worst


@contextlib.contextmanager
def pinned_precision() -> Iterator[dict[str, Any]]:
    """JAX matmuls at 'highest' and torch's TF32 off for the block; yields the settings."""
    prev_jax = jax.config.jax_default_matmul_precision
    prev_torch = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
                  torch.backends.cudnn.allow_tf32)
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield {
            "dtype": "float32",
            "jax_default_matmul_precision": "highest",
            "torch.backends.cuda.matmul.allow_tf32": False,
            "torch.backends.cudnn.allow_tf32": False,
            "torch float32_matmul_precision": "highest",
        }
    finally:
        jax.config.update("jax_default_matmul_precision", prev_jax)
        torch.set_float32_matmul_precision(prev_torch[0])
        torch.backends.cuda.matmul.allow_tf32 = prev_torch[1]
        torch.backends.cudnn.allow_tf32 = prev_torch[2]


def _nchw(a: Any) -> np.ndarray:
    a = np.asarray(a)
    return np.transpose(a, (0, 3, 1, 2)) if a.ndim == 4 else a


def _like(a: np.ndarray, t: Any) -> np.ndarray:
    # a 0-d buffer (num_batches_tracked) must compare as 0-d, whatever the converter returns
    return a.reshape(tuple(t.shape)) if a.size == 1 and t.numel() == 1 else a


def _np(t: Any) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy()


def default_batch(model: nn.Module) -> int:
    """32 for a model with BatchNorm, else 2. Train-mode BatchNorm over a handful of samples
    is ill-conditioned in float32 (with 2 samples, ``(x - mean) / sqrt(var + eps)`` amplifies
    rounding by up to ``1 / (2 sqrt(eps))``, about 160); without it, a small batch keeps the
    run fast and the gradient sums short."""
    has_bn = any(torch_type(m).startswith("BatchNorm") for _, m in named_modules(model))
    return 32 if has_bn else 2


def parity_report(name: str, config: Mapping[str, Any] | None = None, *,
                  weights: str | os.PathLike[str] | None = None, train: bool = False,
                  grad: bool = False, batch: int | None = None, seed: int = 0,
                  input_size: int | None = None, rtol: float = DEFAULT_RTOL,
                  jax_model: nn.Module | None = None, torch_device: str = "cpu") -> ParityReport:
    """Compare the registered model ``name`` layer by layer between torch_ref and jaxcnn.

    The torch twin is initialised by torch from ``seed`` (or loads ``weights``, a
    ``.safetensors`` state dict); jaxcnn gets the converted weights and the same
    ``(batch, C, size, size)`` standard-normal input (NHWC). In ``train`` mode BatchNorm uses
    batch statistics (the updated statistics are compared too) and both sides share jaxcnn's
    dropout masks. ``grad`` adds, for the mean cross-entropy against random labels (the sum of
    the outputs for a model without a classifier), the end-to-end cotangents of each layer's
    output and input and the parameter gradients, and each layer's own backward: jaxcnn's
    layer alone fed torch's input and output cotangent (see :class:`LayerRow`).
    ``jax_model`` replaces the jaxcnn model (to check a modified one). ``batch`` defaults to
    :func:`default_batch`.
    """
    spec = get_spec(name)
    config = dict(config or {})
    cfg = make_config(name, **config)
    size = input_size or spec.input_size
    jm = jax_model if jax_model is not None else build_model(cfg)
    batch = batch or default_batch(jm)
    in_shape = (batch, cfg.in_channels, size, size)
    report = ParityReport(name, dataclasses.asdict(cfg), train, grad, batch, seed, in_shape,
                          "", rtol)
    report.objective = "mean cross-entropy" if spec.classifier else "sum of outputs"
    with pinned_precision() as precision, torch.random.fork_rng(devices=[]):
        report.precision = {"jax device": f"{jax.devices()[0].platform}:{jax.devices()[0].id}",
                            "torch device": str(torch_device), **precision}
        torch.manual_seed(seed)
        tm = build_torch_model(cfg)
        if weights is not None:
            state = load_safetensors(weights)
            tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
            report.weights = os.fspath(weights)
        else:
            report.weights = f"torch default init after torch.manual_seed({seed})"
        tm.to(torch_device)
        if not train:
            report.warnings += _eval_bn_warnings(tm)
        report.modules_compared, report.mismatches = compare_configs(tm, jm)
        try:
            variables = from_torch_state_dict(jm, tm.state_dict())
        except StateDictError as e:
            report.error = f"the torch weights do not convert to the jaxcnn model: {e}"
            return report
        _compare(report, tm, jm, variables, cfg, spec.classifier,
                 torch_device)
    return report


def _eval_bn_warnings(tm: Any) -> list[str]:
    """A warning naming the BatchNorm layers whose eval-mode gain ``1 / sqrt(var + eps)``
    exceeds 30."""
    names, worst_gain, lowest = [], 0.0, np.inf
    for name, m in tm.named_modules():
        var = getattr(m, "running_var", None)
        if var is None:
            var = getattr(m, "moving_var", None)
        if var is None or not hasattr(var, "min"):
            continue
        low = float(var.min())
        gain = 1.0 / float(np.sqrt(max(low, 0.0) + getattr(m, "eps", 1e-5)))
        if gain > 30:
            names.append(name)
            worst_gain, lowest = max(worst_gain, gain), min(lowest, low)
    if not names:
        return []
    return [f"BatchNorm {', '.join(names)}: eval mode divides by sqrt(running var + eps) with "
            f"a running var down to {lowest:.2g}, amplifying float32 rounding up to "
            f"{worst_gain:.0f}x (the book's BatchNorm starts at 0); compare trained weights "
            "(--weights) or use --train"]


def _objective(classifier: bool, y: np.ndarray | None) -> Any:
    def objective(out: jax.Array) -> jax.Array:
        if not classifier:
            return jnp.sum(out)
        logp = jax.nn.log_softmax(out, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(y)[:, None], axis=1))

    return objective


def _compare(report: ParityReport, tm: Any, jm: nn.Module,
             variables: dict[str, Any], cfg: Any, classifier: bool, device: str) -> None:
    train, grad, rtol = report.train, report.grad, report.rtol
    rng = np.random.default_rng(report.seed)
    x = rng.standard_normal(report.input_shape, dtype=np.float32)
    y = rng.integers(0, cfg.num_classes, size=x.shape[0]) if classifier else None
    run = run_jax(jm, variables, jnp.asarray(np.transpose(x, (0, 2, 3, 1))), train=train,
                  key=jax.random.key(report.seed),
                  objective=_objective(classifier, y) if grad else None)
    if run.failure is not None:
        where, exc = run.failure
        msg = str(exc).splitlines()[0] if str(exc) else ""
        report.error = f"jaxcnn raised in {where or '<model>'}: {type(exc).__name__}: {msg}"

    # torch: same mode, jaxcnn's dropout masks, hooks on every module
    tm.train(train)
    tmods = dict(tm.named_modules())
    masks = dropout_masks_to_torch(jm, run.state.get("dropout_masks", {})) if train else {}
    masks = {k: v for k, v in masks.items() if isinstance(tmods.get(k), torch.nn.Dropout)}
    for n, m in tmods.items():  # never reached by jaxcnn (it failed): no mask to share
        if train and isinstance(m, torch.nn.Dropout) and n not in masks:
            m.eval()
    xt = torch.from_numpy(x).to(device).requires_grad_(grad)
    drop = fixed_dropout_masks(tm, masks) if train else contextlib.nullcontext()
    with drop, record_graph(tm, grad=grad) as events, torch.set_grad_enabled(grad):
        out_t = tm(xt)
    if grad:
        if classifier:
            loss_t = torch.nn.functional.cross_entropy(out_t, torch.from_numpy(y).to(device))
        else:
            loss_t = out_t.sum()
        loss_t.backward()
        if run.loss is not None:
            report.loss = (loss_t.item(), run.loss)

    # updated BatchNorm statistics on the jaxcnn side, in torch's names and layout
    new_buffers: dict[str, np.ndarray] = {}
    if train and run.failure is None and "batch_stats" in run.state:
        with contextlib.suppress(KeyError, ValueError):
            new_buffers = to_torch_state_dict(
                jm, {"params": variables["params"], "batch_stats": run.state["batch_stats"]})
    ctx = RowContext(run, new_buffers, tm.state_dict(), {}, {}, dict(named_modules(jm)), train,
                   rtol)
    if grad:
        ctx.t_grads = {k: p.grad for k, p in tm.named_parameters()}
    plan = plan_rows(events, tmods)
    calls = [r for r in plan if not isinstance(r, Merge)]
    if grad:
        ctx.local = _local(report, jm, variables, run, calls, train)
    starts = {e.name: e for e in events if isinstance(e, Start)}
    by_key = {e.name: e for e in events if not isinstance(e, Start)}
    for r in plan:
        report.rows.append(compare_merge(r, starts, by_key, ctx) if isinstance(r, Merge)
                           else compare_row(r, ctx))

    # layers that only jaxcnn ran (a different module tree)
    seen = {c.name for c in calls}
    for n, (_, out) in run.acts.items():
        jmod = ctx.jmods[base_name(n)]
        if n not in seen and is_row_module(torch_type(jmod), _has_children(jmod)):
            report.rows.append(LayerRow(n, torch_type(jmod), None,
                                        tuple(_nchw(out).shape), status="missing",
                                        note="not run by torch"))
    if run.param_grads is not None:
        for key, path, var in torch_variables(jm):
            if var.collection == "params" and key in ctx.t_grads:
                g = var.to_torch(np.asarray(get_path({"params": run.param_grads}, path)))
                report.param_grads[key] = compare(g, _grad(ctx.t_grads[key], g), rtol)


def _has_children(m: nn.Module) -> bool:
    return next(iter(named_children(m)), None) is not None


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (0, 2, 3, 1)) if a.ndim == 4 else a


def _grad(t: Any, like: np.ndarray) -> np.ndarray:
    """A torch ``.grad`` as numpy; None (no gradient reached it) is zeros."""
    return np.zeros_like(like) if t is None else _np(t)


@dataclasses.dataclass
class RowContext:
    """What :func:`compare_row` compares a torch leaf call against: jaxcnn's run, its updated
    BatchNorm buffers (torch names), torch's state and parameter gradients, jaxcnn's per-layer
    backward (``{name: (input cotangent, param grads)}``), jaxcnn's modules by torch name."""

    run: JaxRun
    new_buffers: Mapping[str, np.ndarray]
    t_state: Mapping[str, Any]
    t_grads: dict[str, Any]
    local: dict[str, tuple[np.ndarray, Any]]
    jmods: dict[str, nn.Module]
    train: bool
    rtol: float


def _local(report: ParityReport, jm: nn.Module, variables: Mapping[str, Any], run: JaxRun,
           calls: list[Any], train: bool) -> dict[str, tuple[np.ndarray, Any]]:
    """jaxcnn's backward of every leaf alone, fed torch's input and output cotangent. A graph
    module gets none: its backward is its layers' (each checked here) and parameter-free merges
    (sum, concat, ReLU) that JAX differentiates; run whole, it would recompute its inner values,
    and a ReLU input within rounding of 0 could take the other side than torch's (drift)."""
    if run.grads is None:
        return {}
    inputs, cots = {}, {}
    for c in calls:
        leaf = next(c.module.children(), None) is None
        if leaf and c.name in run.acts and \
                _nchw(run.acts[c.name][1]).shape == tuple(c.output.shape):
            t_out = _np(c.output)
            inputs[c.name] = _nhwc(_np(c.input))
            cots[c.name] = _nhwc(_grad(c.output.grad, t_out))
    try:
        return local_vjps(jm, variables, run.state.get("dropout_masks"), train, inputs, cots)
    except Exception as e:
        report.error = f"the per-layer backward check failed to run: {type(e).__name__}: {e}"
        return {}


def compare_row(c: Any, ctx: RowContext) -> LayerRow:
    """Compare one torch leaf call with jaxcnn's: activation, buffers, gradients, status."""
    run, rtol = ctx.run, ctx.rtol
    row = LayerRow(c.name, type(c.module).__name__, tuple(c.output.shape))
    if c.name not in run.acts:
        failed_here = run.failure is not None and run.failure[0] == c.name
        row.status = "error" if failed_here else "missing"
        row.note = ("raised in jaxcnn" if failed_here else "not reached: jaxcnn failed earlier"
                    if run.failure else "not run by jaxcnn")
        return row
    t_in, t_out = _np(c.input), _np(c.output)
    j_out = _nchw(run.acts[c.name][1])
    row.jax_shape = tuple(j_out.shape)
    row.activation = compare(j_out, t_out, rtol)
    if row.jax_shape != row.shape:
        row.status, row.note = "shape", f"jaxcnn gives {row.jax_shape}"
        return row
    failed = not row.activation.ok
    jmod = ctx.jmods[base_name(c.name)]
    if ctx.train:
        keys = [f"{c.name}.{b}" for b, _ in c.module.named_buffers(recurse=False)]
        row.buffers = worst([compare(_like(ctx.new_buffers[k], ctx.t_state[k]),
                                     _np(ctx.t_state[k]), rtol)
                             for k in keys if k in ctx.new_buffers])
        failed |= row.buffers is not None and not row.buffers.ok
    tie = drift = False
    if run.grads is not None and c.name in run.grads:
        go_t, gi_t = _grad(c.output.grad, t_out), _grad(c.input.grad, t_in)
        gi_j, go_j = (_nchw(a) for a in run.grads[c.name])
        row.grad_out, row.grad_in = compare(go_j, go_t, rtol), compare(gi_j, gi_t, rtol)
        drift = not (row.grad_out.ok and row.grad_in.ok)
        if c.name in ctx.local:
            gx, gp = ctx.local[c.name]
            d_in = compare(_nchw(gx), gi_t, rtol)
            d_params = []
            for key, path, var in torch_variables(jmod):  # the layer's, or the graph's
                with contextlib.suppress(KeyError):
                    if var.collection == "params":
                        g = var.to_torch(np.asarray(get_path({"params": gp}, path)))
                        t_key = f"{base_name(c.name)}.{key}"
                        d_params.append(compare(g, _grad(ctx.t_grads.get(t_key), g), rtol))
            row.local = worst([d_in, *d_params])
            if not row.local.ok:
                tie = (row.type == "MaxPool2d" and all(d.ok for d in d_params)
                       and explained_by_ties(t_in, t_in, gi_t, _nchw(gx), d_in.tol))
                failed |= not tie
        elif next(c.module.children(), None) is None:
            failed = True
            row.note = "no per-layer backward"
    row.status = "over" if failed else "tie" if tie else "drift" if drift else "ok"
    return row
