"""Optimizer parity: optax from ``jaxcnn.training.make_optimizer`` against ``torch.optim`` plus
its scheduler (``torch_ref.optim``), update for update, on every registered model.

Each run takes K = 20 steps from the same weights (the core tests' pairs: torch init, random
BatchNorm state) on the same batches, in train mode (BatchNorm batch statistics; dropout with
the masks that jaxcnn draws for the step, fed to torch with ``torch_ref.fixed_dropout_masks``).
The schedules are per epoch with 4 steps per epoch and 5 epochs, so ``StepLR`` and
``CosineAnnealingLR`` (``scheduler.step()`` after every 4th step) change the rate 4 times.
After every step the loss (of that step's forward), every parameter and every BatchNorm
statistic (``num_batches_tracked`` exactly) must agree within ``jaxcnn.testing.assert_close``.

Coverage: every ``TEST_CONFIGS`` entry (``_cases.py``) of every registered model, and every
optimizer setting of
``OPTIMIZERS`` (sgd plain, with momentum + weight decay + StepLR, with Nesterov + weight decay
+ cosine; adam with coupled weight decay + StepLR; adamw + cosine). lenet and both lenet_bn
kinds run all five; vgg (small) and seed_example two each (between them both Adams and
Nesterov); the 224-pixel models (batch 2) one SGD setting each: alexnet plain, vgg11 (ratio 8)
Nesterov + cosine, nin momentum + StepLR (``ASSIGNED``; a model added to the registry later
takes the next setting in turn). ``test_every_model_and_optimizer_is_covered`` checks it. A
model without classifier is trained on the core tests' fixed random projection of its output.

Max-pool near-ties and ReLU near-zeros: each step's batch is the first of up to ``ATTEMPTS``
seeds on which both training forwards (their own max-pool and ReLU inputs, recorded in the
jitted step and by torch hooks / a patched ``F.relu``) pick the same maximum in every pooling
window (``_cases.max_pool_flips``' method) and give every ReLU input the same sign: at a
float32 near-tie the gradient goes to a different element in each framework, and at a ReLU
input within rounding of zero it passes on one side only, which is correct on both sides but
not comparable (resnet18's step 2 at seed 1000: a 3% difference in one conv's gradient from one
ReLU element of -2.4e-06, see ``XFAIL``). The flip rate grows with the activations' divergence,
which is why the 224-pixel models run SGD: under Adam (and under momentum on alexnet) their two
trajectories' activations drift to 1e-6 within 5-8 steps, and then most batches of two hold a
flip among their 200k+ windows (measured: alexnet + adam, no flip-free batch of 10 at step 5;
nin + adamw at step 19; with the SGD settings above, 1-5 flips in a quarter of the draws).

Adam's eps: the settings use ``eps=1e-3``. Adam's step ``lr * m / (sqrt(v) + eps)`` has a gain
of ``lr / eps`` on a gradient's rounding noise where the gradient is near zero, and some are
exactly zero in exact arithmetic: the bias of a Conv/Linear in front of BatchNorm (BN removes
it). At torch's ``eps=1e-8`` those biases move by up to +-lr per step on noise alone, in each
framework differently (measured on lenet_bn after the first step, adam / adamw: 371x / 355x
the tolerance at eps 1e-8, 47x / 84x at 1e-6, 5x / 15x at 1e-5, 0.8x / 1.6x at 1e-4, 0.25x /
0.41x at 1e-3). The default eps is covered where it is well posed: the
book's Adam on LeNet (``test_book_adam_with_default_eps_on_lenet``, 0.03x the tolerance after
20 steps) and the optimizers alone on shared gradients down to 1e-10
(``test_same_gradients_give_the_same_updates``, at torch's default eps as well).

Re-anchoring (``REANCHOR``: the 224-pixel models, seed_example and resnet18): after each
step's checks the jaxcnn side continues from torch's parameters and BatchNorm state, so every
step is compared from identical weights, while each side's optimizer state (momentum, Adam moments,
schedule) still evolves on its own; a wrong update rule still shows at its first step. Without
it the trajectories' float32 drift depends on the CPU: on an Intel Xeon (AVX-512) machine,
unlike the AMD EPYC where the bounds below were first measured, alexnet + sgd found no
flip-free batch of 20 at step 9-13, and seed_example + adam (ReLU outputs, eps 1e-3) reached
1.1x the tolerance at step 4; resnet18 (64 px, batch 4: its last BatchNorms normalise 16
values per channel) reached 1.08x at step 6 (resnet_block4.0.bn1.running_var), re-anchored
0.03x over the 20 steps.

Tolerance, measured on the development machine (largest diff / default tolerance over the 20
steps and all settings): lenet 0.08, vgg (small) 0.02, seed_example 0.01, alexnet 0.01,
vgg11 ratio 8 0.01, nin 0.01, all held to the default rule. lenet_bn: 0.25-0.41 after the
first step, growing to 2.1 (nn.BatchNorm) and 2.0 (the book's BatchNorm) after 20 (3.3 and
1.6 with an earlier summation order of jaxcnn's conv and BatchNorm layers), always in the
running mean of the BatchNorm after Linear(256, 120): it sums 256 products of drifting weights
plus the BN-cancelled bias ``9.bias``, whose gradient is rounding noise. The lenet_bn runs are
therefore held to ``rtol = 1e-4`` (``RTOL``), 3x the largest measurement.
``test_a_planted_optimizer_difference_is_caught``: each one-detail change of the torch side
(nesterov, coupled decay, step size, eta_min, eps, beta2) fails the run.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any
from unittest import mock

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
import torch

import jaxcnn
import torch_ref
from jaxcnn.testing import DEFAULT_RTOL, assert_close, tolerance
from jaxcnn.training import OptimizerConfig, make_optimizer
from torch_ref.optim import make_optimizer as make_torch_optimizer
from torch_ref.optim import make_scheduler

from ._cases import (
    CASES,
    DIFFS,
    Case,
    inputs,
    jax_input,
    jax_loss,
    make_pair,
    torch_loss,
)

STEPS, STEPS_PER_EPOCH, EPOCHS = 20, 4, 5
ATTEMPTS = 20  # batches tried per step for one without max-pool flips

#: name -> optimizer setting; every optimizer, momentum, nesterov, weight decay and schedule.
OPTIMIZERS: dict[str, OptimizerConfig] = {
    "sgd": OptimizerConfig(name="sgd", lr=0.01),
    "sgd_momentum_wd_step": OptimizerConfig(name="sgd", lr=0.01, momentum=0.9,
                                            weight_decay=1e-2, schedule="step", step_size=2,
                                            gamma=0.5),
    "sgd_nesterov_cosine": OptimizerConfig(name="sgd", lr=0.01, momentum=0.9, nesterov=True,
                                           weight_decay=1e-2, schedule="cosine",
                                           eta_min=1e-3),
    "adam_wd_step": OptimizerConfig(name="adam", lr=2e-3, eps=1e-3, weight_decay=1e-2,
                                    schedule="step", step_size=1, gamma=0.5),
    "adamw_cosine": OptimizerConfig(name="adamw", lr=2e-3, eps=1e-3, weight_decay=0.1,
                                    schedule="cosine"),
}
ALL_OPTIMIZERS = ("lenet", "lenet_bn")
#: The settings of the other models (see the module docstring); a model not listed here takes
#: the next settings of ``OPTIMIZERS`` in turn.
ASSIGNED: dict[str, tuple[str, ...]] = {
    "vgg": ("adam_wd_step", "adamw_cosine"),
    "seed_example": ("sgd_nesterov_cosine", "adam_wd_step"),
    "alexnet": ("sgd",),
    "vgg11": ("sgd_nesterov_cosine",),
    "nin": ("sgd_momentum_wd_step",),
}

#: Models whose jaxcnn side restarts every step from torch's weights and BatchNorm state (the
#: optimizer states still evolve separately on each side); see the module docstring.
REANCHOR = ("alexnet", "vgg11", "nin", "seed_example", "resnet18")

#: Looser bounds (rtol of ``assert_close``) by case id; see the module docstring.
RTOL: dict[str, float] = {"lenet_bn[bn=torch]": 1e-4, "lenet_bn[bn=scratch]": 1e-4}


def _runs() -> list[tuple[Case, str]]:
    names, runs, turn = list(OPTIMIZERS), [], 0
    for case in CASES:
        if case.name in ALL_OPTIMIZERS:
            runs += [(case, opt) for opt in names]
        elif case.name in ASSIGNED:
            runs += [(case, opt) for opt in ASSIGNED[case.name]]
        else:
            runs.append((case, names[turn % len(names)]))
            turn += 1
    return runs


RUNS = _runs()
LENET = next(c for c in CASES if c.name == "lenet")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    """Tiny batches: torch's intra-op threads only add overhead, 3-30x on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_model_and_optimizer_is_covered() -> None:
    cases = {c.id for c, _ in RUNS}
    assert cases == {c.id for c in CASES}
    assert {c.name for c, _ in RUNS} == set(jaxcnn.list_models())
    assert {o for _, o in RUNS} == set(OPTIMIZERS)
    for name in ALL_OPTIMIZERS:
        for case in (c for c in CASES if c.name == name):
            assert {o for c, o in RUNS if c == case} == set(OPTIMIZERS), case.id
    settings = list(OPTIMIZERS.values())
    assert {o.name for o in settings} == {"sgd", "adam", "adamw"}
    assert {o.schedule for o in settings} == {"constant", "step", "cosine"}
    assert any(o.nesterov for o in settings) and any(o.momentum and not o.nesterov
                                                      for o in settings)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_torch_scheduler_learning_rates_match_the_optax_schedule(name: str) -> None:
    """The rate of every step: torch's ``group['lr']`` (scheduler stepped per epoch) against
    the optax update of a unit gradient with plain SGD-like scaling."""
    cfg = dataclasses.replace(OPTIMIZERS[name], name="sgd", momentum=0.0, nesterov=False,
                              weight_decay=0.0)
    p = torch.nn.Parameter(torch.zeros(()))
    opt = make_torch_optimizer(cfg, [p])
    sched = make_scheduler(cfg, opt, EPOCHS)
    tx = make_optimizer(cfg, STEPS_PER_EPOCH, EPOCHS)
    state = tx.init(jax.numpy.zeros(()))
    for step in range(STEPS):
        update, state = tx.update(jax.numpy.ones(()), state, jax.numpy.zeros(()))
        p.grad = torch.zeros(())
        opt.step()
        assert_close(-float(update), opt.param_groups[0]["lr"], f"{name}: lr at step {step}",
                     rtol=1e-6)
        if (step + 1) % STEPS_PER_EPOCH == 0 and sched is not None:
            sched.step()


def _check(case: Case, actual: Any, expected: Any, what: str, rtol: float,
           record: bool = True) -> None:
    """``assert_close`` at ``rtol``; the diff is also recorded, against the default rule's
    tolerance, for the suite's summary table."""
    diff = assert_close(actual, expected, what, rtol=rtol)
    if not record:
        return
    tol = tolerance(np.max(np.abs(expected)))  # = tolerance(expected), one pass cheaper
    old = DIFFS.get((case.id, "20 optimizer steps"))
    if old is None or diff / tol > old[0] / old[1]:
        DIFFS[(case.id, "20 optimizer steps")] = (diff, tol)


def _flips(torch_pools: list[tuple[torch.nn.Module, torch.Tensor]],
           jax_pools: list[jax.Array]) -> int:
    """Pooling windows where torch and jaxcnn pick a different maximum, given each side's
    max-pool inputs (torch NCHW, jaxcnn NHWC) from the very forward passes of the step."""
    assert len(torch_pools) == len(jax_pools)
    flips = 0
    for (mod, a_t), a_j in zip(torch_pools, jax_pools, strict=True):
        a_j = torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(a_j), (0, 3, 1, 2))))
        args = (mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode, True)
        flips += int((torch.nn.functional.max_pool2d(a_t, *args)[1]
                      != torch.nn.functional.max_pool2d(a_j, *args)[1]).sum())
    return flips


def _relu_flips(torch_relus: list[torch.Tensor], jax_relus: list[jax.Array]) -> int:
    """ReLU inputs that are positive on one side and not on the other (torch NCHW, jaxcnn
    NHWC, in call order), from the very forward passes of the step: a float32 near-zero whose
    sign each framework's rounding decides, so the gradient passes on one side only."""
    assert len(torch_relus) == len(jax_relus)
    flips = 0
    for a_t, a_j in zip(torch_relus, jax_relus, strict=True):
        a_j = np.asarray(a_j)
        if a_j.ndim == 4:
            a_j = np.transpose(a_j, (0, 3, 1, 2))
        flips += int(np.sum((a_t.numpy() > 0) != (a_j > 0)))
    return flips


@functools.cache
def _jax_fns(case: Case) -> tuple[Any, Any]:
    """Jitted ``draw_masks(variables, x, key)`` (``None`` for a model without dropout) and
    ``grads(params, other collections, x, y) -> (loss, grads, batch_stats, max-pool inputs,
    ReLU inputs)``, compiled once per case and shared by its optimizer settings. The ReLU
    inputs are those of every ``jax.nn.relu`` call (the ``ReLU`` layer's and the functional
    ones, e.g. in ``Residual``), recorded by patching it while the function is traced."""
    model = make_pair(case).model

    def draw_masks(variables: Any, x: jax.Array, key: jax.Array) -> Any:
        _, state = model.apply(variables, x, train=True, mutable=["batch_stats", "dropout_masks"],
                               rngs={"dropout": key})
        return state["dropout_masks"]

    def grads(params: Any, other: Any, x: jax.Array, y: jax.Array) -> Any:
        def loss_fn(p: Any) -> Any:
            pools: list[jax.Array] = []

            def record(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
                if (isinstance(context.module, jaxcnn.layers.MaxPool2d)
                        and context.method_name == "__call__"):
                    pools.append(args[0])
                return next_fun(*args, **kwargs)

            relus: list[jax.Array] = []
            relu = jax.nn.relu

            def recording_relu(a: jax.Array) -> jax.Array:
                relus.append(a)
                return relu(a)

            with nn.intercept_methods(record), mock.patch.object(jax.nn, "relu",
                                                                 recording_relu):
                out, state = model.apply({**other, "params": p}, x, train=True,
                                         mutable=["batch_stats"])
            return jax_loss(case, out, y), (state.get("batch_stats"), pools, relus)

        (loss, (stats, pools, relus)), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, g, stats, pools, relus

    has_dropout = any(isinstance(m, jaxcnn.layers.Dropout) for m in jaxcnn.modules(model))
    return (jax.jit(draw_masks) if has_dropout else None), jax.jit(grads)


def _optax_step(tx: optax.GradientTransformation) -> Any:
    """Jitted ``(grads, opt_state, params) -> (params, opt_state)``: ``tx.update``, then
    ``optax.apply_updates``, as ``jaxcnn.training.train_step`` does."""

    def step(grads: Any, opt_state: Any, params: Any) -> tuple[Any, Any]:
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step)


def _torch_forward(tm: torch.nn.Module, x: np.ndarray, masks: dict[str, np.ndarray]
                   ) -> tuple[torch.Tensor, list[tuple[torch.nn.Module, torch.Tensor]],
                              list[torch.Tensor]]:
    """The training forward with fixed dropout masks, the inputs of its max poolings and
    those of its ``F.relu`` calls (``nn.ReLU``'s and the functional ones)."""
    pools: list[tuple[torch.nn.Module, torch.Tensor]] = []
    relus: list[torch.Tensor] = []
    relu = torch.nn.functional.relu

    def recording_relu(a: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        relus.append(a.detach().clone())
        return relu(a, inplace=inplace)

    hooks = [m.register_forward_hook(lambda mod, i, o: pools.append((mod, i[0].detach())))
             for m in tm.modules() if isinstance(m, torch.nn.MaxPool2d)]
    try:
        with torch_ref.fixed_dropout_masks(tm, masks), mock.patch.object(
                torch.nn.functional, "relu", recording_relu):
            out = tm(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    return out, pools, relus


def _train_both(case: Case, cfg: OptimizerConfig, rtol: float,
                torch_cfg: OptimizerConfig | None = None) -> None:
    """``STEPS`` optimizer steps on both sides from the pair's weights; asserts the loss, every
    parameter and every BatchNorm statistic after each. ``torch_cfg`` (default ``cfg``)
    configures the torch side, to plant a difference.

    Each step's batch is the first of ``ATTEMPTS`` seeds on which both training forwards pick the
    same maximum in every pooling window (a rejected batch is undone: jaxcnn's step is a pure
    function and torch's BatchNorm buffers are restored)."""
    pair = make_pair(case)
    model, tm = pair.model, pair.fresh_torch().train()
    opt = make_torch_optimizer(torch_cfg or cfg, tm.parameters())
    sched = make_scheduler(torch_cfg or cfg, opt, EPOCHS)
    tx = make_optimizer(cfg, STEPS_PER_EPOCH, EPOCHS)
    draw_masks, grad_fn = _jax_fns(case)
    optax_step = _optax_step(tx)
    params = pair.variables["params"]
    stats = pair.variables.get("batch_stats")
    opt_state = tx.init(params)
    names = {k for k, _ in tm.named_parameters()}
    for step in range(STEPS):
        where, record = f"{case.id} step {step + 1}", torch_cfg is None
        other = {"batch_stats": stats} if stats else {}
        masks: Any = {}
        if draw_masks is not None:
            x, _ = inputs(case, seed=1000 * step)
            masks = draw_masks({"params": params, **other}, jax_input(x), jax.random.key(step))
            other["dropout_masks"] = masks
        torch_masks = jaxcnn.convert.dropout_masks_to_torch(model, masks)
        for attempt in range(ATTEMPTS):
            x, y = inputs(case, seed=1000 * step + attempt)
            loss_j, grads, new_stats, jax_pools, jax_relus = grad_fn(params, other,
                                                                     jax_input(x), y)
            saved = {k: v.clone() for k, v in tm.named_buffers()}
            out, pools, relus = _torch_forward(tm, x, torch_masks)
            if _flips(pools, jax_pools) == 0 and _relu_flips(relus, jax_relus) == 0:
                break
            with torch.no_grad():
                for k, v in tm.named_buffers():
                    v.copy_(saved[k])
        else:
            raise AssertionError(f"{where}: every input of {ATTEMPTS} seeds has a max-pool or "
                                 "ReLU flip")
        params, opt_state = optax_step(grads, opt_state, params)
        stats = new_stats
        loss_t = torch_loss(case, out, y)
        opt.zero_grad()
        loss_t.backward()
        opt.step()
        if sched is not None and (step + 1) % STEPS_PER_EPOCH == 0:
            sched.step()

        _check(case, float(loss_j), float(loss_t.detach()), f"{where}: loss", rtol, record)
        got = jaxcnn.to_torch_state_dict(
            model, {"params": params, **({"batch_stats": stats} if stats else {})})
        expected = tm.state_dict()
        assert list(got) == list(expected), f"{where}: state-dict keys differ"
        for key, value in expected.items():
            value = value.numpy()
            if key.endswith("num_batches_tracked"):
                assert int(got[key]) == int(value), f"{where}: {key}"
            else:
                kind = "parameter" if key in names else "BatchNorm statistic"
                _check(case, got[key], value, f"{where}: {kind} {key}", rtol, record)
        if case.name in REANCHOR:
            anchored = jaxcnn.from_torch_state_dict(model, expected)
            params, stats = anchored["params"], anchored.get("batch_stats")


#: Runs expected to fail, by id (reason), none at present. resnet18 + sgd_nesterov_cosine was
#: one until the ReLU screening (issue 13): its step-2 batch (seed 1000) holds a ReLU near-zero,
#: element (2, 6, 5, 39) NHWC of resnet_block2.1's relu(bn1(...)) input: -2.36e-06 in float64
#: and in torch, -5.5e-07 in jaxcnn eager, +1.93e-06 in jaxcnn jitted (XLA's fusions round
#: differently; the layer's float32 error is up to 9.6e-06 either way). The jitted gradient
#: is float64's with that one element passed by the ReLU (1.4e-06 apart), 9.9e-03 (3%) from
#: float64's in resnet_block2.1.conv1.weight: a kink, not a wrong op.
XFAIL: dict[str, str] = {}


@pytest.mark.parametrize(("case", "opt_name"), [
    pytest.param(c, o, id=f"{c.id}-{o}", marks=[pytest.mark.xfail(
        reason=XFAIL[f"{c.id}-{o}"], strict=True)] if f"{c.id}-{o}" in XFAIL else [])
    for c, o in RUNS])
def test_optimizer_steps_match_torch(case: Case, opt_name: str) -> None:
    _train_both(case, OPTIMIZERS[opt_name], RTOL.get(case.id, DEFAULT_RTOL))


def test_book_adam_with_default_eps_on_lenet() -> None:
    """The book's optimizer as it is (Adam, lr 1e-3, eps 1e-8) on LeNet, at the default rule
    (measured: 0.03 of the tolerance after 20 steps; LeNet has no BatchNorm, see ``RTOL``)."""
    _train_both(LENET, OptimizerConfig(name="adam", lr=1e-3), DEFAULT_RTOL)


#: name -> (jaxcnn setting, torch setting that differs in one detail).
PLANTED: dict[str, tuple[OptimizerConfig, OptimizerConfig]] = {
    "nesterov": (OPTIMIZERS["sgd_nesterov_cosine"],
                 dataclasses.replace(OPTIMIZERS["sgd_nesterov_cosine"], nesterov=False)),
    "coupled_decay": (OPTIMIZERS["adamw_cosine"],
                      dataclasses.replace(OPTIMIZERS["adamw_cosine"], name="adam")),
    "step_size": (OPTIMIZERS["sgd_momentum_wd_step"],
                  dataclasses.replace(OPTIMIZERS["sgd_momentum_wd_step"], step_size=1)),
    "eta_min": (OPTIMIZERS["sgd_nesterov_cosine"],
                dataclasses.replace(OPTIMIZERS["sgd_nesterov_cosine"], eta_min=0.0)),
    "eps": (OPTIMIZERS["adam_wd_step"],
            dataclasses.replace(OPTIMIZERS["adam_wd_step"], eps=1e-4)),
    "beta2": (OPTIMIZERS["adamw_cosine"],
              dataclasses.replace(OPTIMIZERS["adamw_cosine"], betas=(0.9, 0.99))),
}


@pytest.mark.parametrize("name", list(PLANTED))
def test_a_planted_optimizer_difference_is_caught(name: str) -> None:
    """The harness has the power to see a one-detail difference of the torch side."""
    cfg, torch_cfg = PLANTED[name]
    with pytest.raises(AssertionError, match="max \\|diff\\|"):
        _train_both(LENET, cfg, DEFAULT_RTOL, torch_cfg)


@pytest.mark.parametrize("name", [*OPTIMIZERS, "adam_book", "adamw_book"])
def test_same_gradients_give_the_same_updates(name: str) -> None:
    """The optimizers alone: both sides get the very same gradients for 20 steps, with
    magnitudes from 1e-10 to 1 and exact zeros (Adam's eps regime at torch's default eps)."""
    cfg = {**OPTIMIZERS, "adam_book": OptimizerConfig(name="adam"),
           "adamw_book": OptimizerConfig(name="adamw")}[name]
    rng = np.random.default_rng(0)
    shapes = {"w": (32, 16), "b": (16,)}
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    opt = make_torch_optimizer(cfg, torch_params.values())
    sched = make_scheduler(cfg, opt, EPOCHS)
    tx = make_optimizer(cfg, STEPS_PER_EPOCH, EPOCHS)
    update = jax.jit(tx.update)
    state = tx.init(params)
    for step in range(STEPS):
        grads = {k: (rng.standard_normal(s) * 10.0 ** rng.uniform(-10, 0, s)
                     * (rng.random(s) > 0.1)).astype(np.float32) for k, s in shapes.items()}
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for k, p in torch_params.items():
            p.grad = torch.tensor(grads[k])
        opt.step()
        if sched is not None and (step + 1) % STEPS_PER_EPOCH == 0:
            sched.step()
        for k, p in torch_params.items():
            assert_close(params[k], p.detach().numpy(), f"{name} step {step + 1}: {k}")


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizer_config_defaults_are_torchs(name: str) -> None:
    """``OptimizerConfig``'s defaults configure both sides, so they must be torch's own: each
    field equals the default in the signature of ``torch.optim.SGD/Adam/AdamW`` (and of the
    schedulers), and the torch optimizer built from ``OptimizerConfig(name=...)`` has the same
    ``defaults`` as one built with no arguments."""
    import inspect

    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    cfg = OptimizerConfig(name=name)
    sig = {k: v.default for k, v in inspect.signature(cls).parameters.items()}
    fields = {"lr": cfg.lr, "weight_decay": cfg.effective_weight_decay}
    if name == "sgd":
        fields |= {"momentum": cfg.momentum, "nesterov": cfg.nesterov}
    else:
        fields |= {"betas": cfg.betas, "eps": cfg.eps}
    for key, value in fields.items():
        assert value == sig[key], f"{name}: OptimizerConfig {key} = {value!r}, torch {sig[key]!r}"
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert make_torch_optimizer(cfg, p).defaults == cls(p).defaults
    step = inspect.signature(torch.optim.lr_scheduler.StepLR).parameters
    cosine = inspect.signature(torch.optim.lr_scheduler.CosineAnnealingLR).parameters
    assert cfg.gamma == step["gamma"].default and cfg.eta_min == cosine["eta_min"].default

