"""Optimizer parity: optax from ``jaxcnn.training.make_optimizer`` against ``torch.optim`` plus
its scheduler (``torch_ref.optim``), update for update, on every registered model.

Each run takes K steps (20; ``STEPS_OF``: 2 on the 224-pixel models, 3 on the graph models)
from the same weights (the core tests' pairs: torch init, random BatchNorm state) on the same
batches, in train mode (BatchNorm batch statistics; dropout with the masks that jaxcnn draws for
the step, fed to torch with ``torch_ref.fixed_dropout_masks``), with no re-anchoring: every
side follows its own trajectory. The schedules are per epoch with 4 steps per epoch and 5
epochs, so ``StepLR`` and ``CosineAnnealingLR`` change the rate 4 times in 20 steps.

Five sides (``_train_both``): jaxcnn float32, torch float32, torch float64, jaxcnn float64, and
jaxcnn float64 on jaxcnn float32's ReLU and max-pool branches (``_branches``; it forks from
jaxcnn float64 at the first step where float32 takes another branch). After every step:

* jaxcnn float64 against torch float64, ``TRAJ_RTOL`` (1e-8): the loss, every parameter and
  BatchNorm statistic (values rule, ``max(1, |x|)``) and every parameter's update of the step
  (own scale). This is where an implementation or configuration error shows: near-exact
  arithmetic, no rounding-decided branch.
* jaxcnn float32 against the same-branch float64 side, bound ``max(2 * max |t32 - t64|, tol)``
  (``jaxcnn.testing.assert_referee``): the loss, every parameter and BatchNorm statistic
  (``tol``: values rule 1e-5; ``num_batches_tracked`` exactly), and every parameter's update
  of the step (``tol``: 1e-5 of its own scale plus float32's rounding of the stored weights).
  Under Adam/AdamW the bounds add Adam's gain on the gradients' own float32 tolerance
  (``ADAM_GAIN``): per step for the update, accumulated over the steps for the parameters, and
  its first-order effect on the loss.
* each step's largest update is at least ``MIN_POWER`` (5) times its update check's bound.

Coverage: every ``TEST_CONFIGS`` entry (``_cases.py``) of every registered model with momentum
and an Adam (``ASSIGNED``; AlexNet with an Adam alone, ``ONE_SETTING``; lenet and both lenet_bn
kinds run all five settings of ``OPTIMIZERS``: sgd plain, momentum + weight decay + StepLR,
Nesterov + weight decay + cosine, adam with coupled weight decay + StepLR, adamw + cosine);
``test_every_model_and_optimizer_is_covered`` checks it. A model without classifier is trained
on the core tests' fixed random projection of its output. Sizes and batches: the core tests'
(``_cases.py``), except ``SIZE``/``BATCH``: resnet18 at 32 px and densenet at batch 16
(train-mode BatchNorm over 16 values per channel at the smallest feature map), NiN at 96 px;
lenet_bn runs at batch 16.

Adam's eps: the settings use ``eps=1e-3``; the book's Adam (lr 1e-3, eps 1e-8) runs on lenet
and both lenet_bn kinds (``test_book_adam_with_default_eps``), and the optimizers alone on
shared gradients from 1e-10 to 1 at torch's default eps (``test_same_gradients_give_the_same_
updates``). The one named exception, under Adam/AdamW only: the biases right before a
BatchNorm (``_cancelled``; lenet_bn's ``0.bias 4.bias 9.bias 12.bias``), whose exact gradient
is zero (asserted on torch float64 every step) and whose float32 gradient is rounding noise
that Adam turns into steps of up to ~lr: their values and updates are not compared, the running
mean they reach is, less its EMA of the bias.

Planted errors (``test_a_planted_error_is_caught``, ``test_a_planted_optimizer_difference_is_
caught``): jaxcnn's gradient of one layer times 1.01 in all precisions and in float32 only,
Adam's eps, BatchNorm momentum, SGD momentum, nesterov, coupled decay, StepLR's step size,
cosine's eta_min, Adam's eps and beta2 on the torch side: each fails its run; the messages are
printed at the end of the run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import optax
import pytest
import torch

import jaxcnn
import torch_ref
from jaxcnn.testing import EXACT_ZERO, assert_close, assert_referee, grad_scales, tolerance
from jaxcnn.training import OptimizerConfig, make_optimizer
from torch_ref.crosscheck.compare import bn_cancelled_pairs
from torch_ref.optim import make_optimizer as make_torch_optimizer
from torch_ref.optim import make_scheduler

from . import _branches
from ._branches import to_float64
from ._cases import (
    BN_CASES,
    CASES,
    DIFFS,
    FLIPS,
    PLANTED_FAILURES,
    Case,
    inputs,
    jax_fns,
    jax_input,
    make_pair,
    torch_loss,
)

STEPS, STEPS_PER_EPOCH, EPOCHS = 20, 4, 5

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
#: The settings of the other models: each has momentum and an Adam (see the module docstring;
#: ``ONE_SETTING`` excepted); a model not listed here takes ``DEFAULT_ASSIGNED``.
ASSIGNED: dict[str, tuple[str, ...]] = {
    "vgg": ("sgd_momentum_wd_step", "adam_wd_step", "adamw_cosine"),
    "seed_example": ("sgd_nesterov_cosine", "adam_wd_step"),
    "alexnet": ("adam_wd_step",),
    "vgg11": ("sgd_nesterov_cosine", "adamw_cosine"),
    "nin": ("sgd_momentum_wd_step", "adamw_cosine"),
}
DEFAULT_ASSIGNED = ("sgd_momentum_wd_step", "adam_wd_step")
#: Models that run a single setting, an Adam (whose first moment is a momentum): AlexNet's 46M
#: parameters on five sides make a run 50-55 s of the suite on 2 cores, mostly float64 array
#: copies and comparisons; SGD with momentum is the same optax code on every model, and
#: covered on all the others.
ONE_SETTING = ("alexnet",)

#: Costly models take fewer steps (2 at 224 px, 3 for the graph models): enough for momentum
#: and Adam's moments to carry a step into the next; the schedules' rate changes (step 4) are
#: covered on the cheap models and by the schedule test.
STEPS_OF: dict[str, int] = {"alexnet": 2, "vgg11": 2, "nin": 2, "googlenet": 3,
                            "resnet18": 3, "densenet": 3}
#: Batch sizes that differ from the core tests' (``Case.batch``): the BatchNorm models run at
#: 16, so that train-mode BatchNorm sees 16 values per channel at its smallest feature map.
BATCH: dict[str, int] = {"resnet18": 16, "densenet": 16}
#: Input sizes that differ from the core tests' (smaller, where every layer still has output):
#: resnet18's last stage is 1x1 at 32 px (16 values per channel at batch 16); NiN at 96 px
#: ends its convolutions at 1x1 before the global pooling.
SIZE: dict[str, int] = {"resnet18": 32, "nin": 96}
#: float32's machine epsilon: a weight stored in float32 is rounded by up to half of it (relative).
F32_EPS = float(np.finfo(np.float32).eps)
#: Adam's update ``lr * m / (sqrt(v) + eps)`` (bias-corrected ``m``, ``v``) moves by up to
#: ``lr / eps`` per unit of error in ``m`` (at ``v`` -> 0, its largest derivative), and as much
#: again through ``sqrt(v)``; ``m`` and ``v`` are averages of the gradients so far, so their
#: error is at most the largest of those gradients' errors. The update check under Adam/AdamW
#: therefore adds ``ADAM_GAIN * lr / eps`` times the gradient tolerance (``1e-5`` of the largest
#: ``max |g|`` so far, float64): float32 gradient rounding that the gradient rule accepts, no
#: more. Without it, the update of an element with ``|g|`` near ``eps`` is held to ``1e-5 *
#: lr`` while its gradient is only known to ``1e-5 * max |g|`` (measured, lenet_bn + adamw,
#: step 1 from identical weights: 0.weight's update 1.96e-07 from float64 for jaxcnn, 8.3e-08
#: for torch float32, own-scale bound 4.4e-08; jaxcnn's conv-weight gradient sums the batch and
#: the pixels in another order, 2.4x torch's rounding there). The parameters carry these
#: update errors along, so their bound adds the sum of the steps' terms so far, and the loss
#: (a function of the parameters) adds ``sum |g64| * that sum`` over the tensors: its
#: first-order response (measured, seed_example + adam: jaxcnn's loss 3.9e-05 from float64 at
#: step 3 with no flipped branch, torch float32 1.3e-07, values rule 2.5e-05; its gradients are
#: within 11% of their own-scale tolerance, so this is rounding, amplified by Adam).
ADAM_GAIN = 2.0
#: jaxcnn float64 against torch float64 along the trajectory, values rule (parameters, loss,
#: BatchNorm statistics) and own scale (updates). float64's rounding is ~1e-16; the bound
#: leaves room for its growth over the steps through ill-conditioned train-mode BatchNorm.
#: (jaxcnn's lr table was float32 even in a float64 run, 6e-8 of each update: resnet18 + adam's
#: stem update at step 2 was 5.8e-06 of its scale off; the table now follows JAX's x64 mode.)
TRAJ_RTOL = 1e-8
#: Each step's largest update must be at least this many times its update check's bound (the
#: update check holds every parameter's step to its own scale, 1e-5 of it, plus float32's
#: rounding of the stored weights and Adam's gain term: this asserts that those added terms
#: leave it the power to see the step).
MIN_POWER = 5.0


def _runs() -> list[tuple[Case, str]]:
    runs = []
    for case in CASES:
        if case.name in SIZE:
            case = dataclasses.replace(case, size=SIZE[case.name])
        opts = OPTIMIZERS if case.name in ALL_OPTIMIZERS else ASSIGNED.get(case.name,
                                                                          DEFAULT_ASSIGNED)
        runs += [(case, opt) for opt in opts]
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
            assert {o for c, o in RUNS if c.id == case.id} == set(OPTIMIZERS), case.id
    for case in CASES:  # momentum and an Adam on every model (an Adam alone: ONE_SETTING)
        opts = [OPTIMIZERS[o] for c, o in RUNS if c.id == case.id]
        assert any(o.name in ("adam", "adamw") for o in opts), case.id
        if case.name in ONE_SETTING:
            assert len(opts) == 1, case.id
        else:
            assert any(o.momentum > 0 for o in opts), case.id
    settings = list(OPTIMIZERS.values())
    assert {o.name for o in settings} == {"sgd", "adam", "adamw"}
    assert {o.schedule for o in settings} == {"constant", "step", "cosine"}
    assert any(o.nesterov for o in settings) and any(o.momentum and not o.nesterov
                                                      for o in settings)


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


def _optax_step(tx: optax.GradientTransformation) -> Any:
    """Jitted ``(grads, opt_state, params) -> (params, opt_state)``: ``tx.update``, then
    ``optax.apply_updates``, as ``jaxcnn.training.train_step`` does."""

    def step(grads: Any, opt_state: Any, params: Any) -> tuple[Any, Any]:
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step)


class _TorchSide:
    """One torch trajectory (float32, or float64 for the referee): model, optimizer, schedule."""

    def __init__(self, case: Case, cfg: OptimizerConfig, dtype: torch.dtype) -> None:
        self.case, self.dtype = case, dtype
        self.model = make_pair(case).fresh_torch().to(dtype).train()
        self.opt = make_torch_optimizer(cfg, self.model.parameters())
        self.sched = make_scheduler(cfg, self.opt, EPOCHS)

    def step(self, step: int, x: np.ndarray, y: np.ndarray, masks: dict[str, Any]) -> float:
        with torch_ref.fixed_dropout_masks(self.model, masks):
            out = self.model(torch.from_numpy(x).to(self.dtype))
        loss = torch_loss(self.case, out, y)
        self.opt.zero_grad()
        loss.backward()
        self.lr = float(self.opt.param_groups[0]["lr"])  # this step's rate
        if self.dtype == torch.float64:  # the referee's gradients: scales, the BN-cancelled
            self.grads = {k: p.grad.detach().numpy().copy()
                          for k, p in self.model.named_parameters() if p.grad is not None}
        self.opt.step()
        if self.sched is not None and (step + 1) % STEPS_PER_EPOCH == 0:
            self.sched.step()
        return float(loss.detach())

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}


def _train_both(case: Case, cfg: OptimizerConfig, torch_cfg: OptimizerConfig | None = None,
                steps: int | None = None, plant: Any = None) -> float:
    """A real trajectory of ``steps`` (default ``STEPS_OF``) optimizer steps from the pair's
    weights on five sides: jaxcnn float32 (``cfg``), torch float32 and float64 (``torch_cfg``,
    default ``cfg``, to plant a difference), jaxcnn float64, and jaxcnn float64 on float32's
    branches (``_branches``; it forks from jaxcnn float64 at the first step where jaxcnn float32
    takes another ReLU or max-pool branch, and until then is the same). After each step:

    * jaxcnn float64 against torch float64 (``TRAJ_RTOL``, values rule): the loss, every
      parameter and BatchNorm statistic; the same function and optimizer in near-exact
      arithmetic.
    * jaxcnn float32 against the same-branch float64 side (``assert_referee``, bound from torch
      float32's distance to float64): the loss, every parameter and BatchNorm statistic (values
      rule; ``num_batches_tracked`` exactly) and every parameter's update of the step (on its
      own scale, ``grad_scales``).

    ``plant``: a planted error, ``(grads, float64) -> grads`` applied to jaxcnn's gradients
    (float32 only, or all of jaxcnn's sides, as it chooses), or ``(torch model) -> None``
    applied to both torch models. Returns the smallest ratio, over the steps, of the step's
    largest update to the parameter check's bound (the update is that many times what the
    check lets pass)."""
    pair = make_pair(case)
    model = pair.model
    t32 = _TorchSide(case, torch_cfg or cfg, torch.float32)
    t64 = _TorchSide(case, torch_cfg or cfg, torch.float64)
    plant_grads = plant if isinstance(plant, _PlantGrads) else (lambda g, _: g)
    if plant is not None and not isinstance(plant, _PlantGrads):
        plant(t32.model)
        plant(t64.model)
    tx = make_optimizer(cfg, STEPS_PER_EPOCH, EPOCHS)
    draw_masks, grads32, grads64, forced64 = jax_fns(case)
    step32 = _optax_step(tx)
    params = pair.variables["params"]
    stats = pair.variables.get("batch_stats")
    opt_state = tx.init(params)
    with jax.enable_x64(True):  # the schedule's table in float64 too
        tx64 = make_optimizer(cfg, STEPS_PER_EPOCH, EPOCHS)
        step64 = _optax_step(tx64)
        nat = [to_float64(params), to_float64(stats), tx64.init(to_float64(params))]
    same: list[Any] | None = None  # the same-branch side once forked: params, stats, opt state
    names = [k for k, _ in t32.model.named_parameters()]
    record = torch_cfg is None and plant is None
    # The named exception (see ``_cancelled``): bias -> (its BatchNorm's running-mean key,
    # weight of a batch's mean in it); under Adam/AdamW only.
    cancelled = _cancelled(t32.model) if cfg.name in ("adam", "adamw") else {}
    checked = [k for k in names if k not in cancelled]
    # Per side (jaxcnn 32, torch 32, torch 64, same-branch 64, jaxcnn 64), each cancelled
    # bias's share of its BatchNorm's running mean: the running mean is an EMA of the batch
    # means of (W x + bias), so it carries an EMA of the bias values, which is taken out before
    # the comparison (exact algebra, the same update as the BN's).
    bias_ema = [{k: 0.0 for k in cancelled} for _ in range(5)]
    grad_top: dict[str, float] = {}  # each gradient's own scale, largest so far (float64)
    drift = {k: 0.0 for k in checked}  # Adam's accumulated gain on gradient rounding
    _BOUNDS.clear()
    before = (pair.state_dict_numpy,) * 5
    power = np.inf
    flips = (0, 0)
    for step in range(steps or STEPS_OF.get(case.name, STEPS)):
        where = f"{case.id} step {step + 1}"
        x, y = inputs(case, seed=1000 * step, batch=BATCH.get(case.name))
        other = {"batch_stats": stats} if stats else {}
        if draw_masks is not None:
            other["dropout_masks"] = draw_masks({"params": params, **other}, jax_input(x),
                                                jax.random.key(step))
        torch_masks = jaxcnn.convert.dropout_masks_to_torch(model, other.get("dropout_masks",
                                                                             {}))
        (loss_j, (stats, _), grads), masks32, picks32 = grads32(params, other, jax_input(x), y)
        params, opt_state = step32(plant_grads(grads, False), opt_state, params)
        with jax.enable_x64(True):
            x64 = to_float64(jax_input(x))
            masks64 = to_float64(other.get("dropout_masks"))

            def other64(st: Any, masks: Any = masks64) -> dict[str, Any]:
                o = {"batch_stats": st} if st else {}
                return o | ({"dropout_masks": masks} if masks is not None else {})

            (loss_n, (stats_n, _), g_n), m_n, p_n = grads64(nat[0], other64(nat[1]), x64, y)
            if same is None:
                flips = _branches.flips(masks32, picks32, m_n, p_n)
                if flips != (0, 0):
                    same = list(nat)
            if same is not None:
                loss_s, (stats_s, _), g_s = forced64(masks32, picks32, same[0], other64(same[1]),
                                                x64, y)
                same[0], same[2] = step64(plant_grads(g_s, True), same[2], same[0])
                same[1] = stats_s
            nat[0], nat[2] = step64(plant_grads(g_n, True), nat[2], nat[0])
            nat[1] = stats_n
            if same is None:
                loss_s = loss_n
            got, got_n, *forked = [jaxcnn.to_torch_state_dict(model, {"params": p, **(
                {"batch_stats": st} if st else {})}) for p, st in (
                (params, stats), (nat[0], nat[1]), *([same[:2]] if same else []))]
        got_s = forked[0] if forked else got_n  # the same-branch side: jaxcnn float64 until forked
        for ema, side in zip(bias_ema, before, strict=True):
            for k, (_, w) in cancelled.items():  # the bias of this step's forward
                ema[k] = (1.0 - w) * ema[k] + w * side[k].astype(np.float64)
        loss_32 = t32.step(step, x, y, torch_masks)
        loss_64 = t64.step(step, x, y, torch_masks)
        if cancelled:  # the exception's premise, on every step: zero gradient in float64
            top = max(float(np.max(np.abs(g))) for g in t64.grads.values())
            for k in cancelled:
                g = float(np.max(np.abs(t64.grads[k])))
                assert g <= EXACT_ZERO * top, (
                    f"{where}: {k} is excluded as BN-cancelled but its float64 gradient is "
                    f"{g:.3e} ({g / top:.1e} of the largest)")
        for k, g in grad_scales(t64.grads).items():
            grad_top[k] = max(grad_top.get(k, 0.0), g)
        # Adam's gain on the gradients' own tolerance (ADAM_GAIN): this step's share of each
        # update's error, and the loss's first-order response to the drift so far.
        adam = cfg.name in ("adam", "adamw")
        gain = {k: ADAM_GAIN * t64.lr / cfg.eps * tolerance(0.0, scale=grad_top[k])
                if adam else 0.0 for k in checked}
        loss_drift = sum(float(np.sum(np.abs(t64.grads[k]))) * drift[k] for k in checked)
        for k in checked:
            drift[k] += gain[k]
        _exact(case, float(loss_n), loss_64, f"{where}: loss", record)
        _check(case, float(loss_j), loss_32, loss_64, f"{where}: loss",
               tolerance(loss_64) + loss_drift, record, reference=float(loss_s))
        after = (got, t32.state(), t64.state(), got_s, got_n)
        assert list(got) == list(after[1]), f"{where}: state-dict keys differ"
        for key, v64 in after[2].items():
            if key.endswith("num_batches_tracked"):
                assert int(got[key]) == int(after[1][key]) == int(v64), f"{where}: {key}"
            elif key not in names:
                vals = [side[key].astype(np.float64) for side in after]
                for k, (mean_key, _) in cancelled.items():
                    if key == mean_key:
                        vals = [v - ema[k].reshape(v.shape)
                                for v, ema in zip(vals, bias_ema, strict=True)]
                        key = f"{key} (less its EMA of {k})"
                what = f"{where}: BatchNorm statistic {key}"
                _exact(case, vals[4], vals[2], what, record)
                _check(case, vals[0], vals[1], vals[2], what, tolerance(vals[2]), record,
                       reference=vals[3])
        for key in checked:
            what = f"{where}: parameter {key}"
            _exact(case, got_n[key], after[2][key], what, record)
            _check(case, got[key], after[1][key], after[2][key], what,
                   tolerance(after[2][key]) + drift[key], record, reference=got_s[key])
        # Each side's update of the step, in float64: torch float64's for every parameter
        # (their scales), the other sides' one parameter at a time (AlexNet: 46M parameters on
        # five sides); the same-branch side is jaxcnn float64's until it forks.
        update64 = {k: after[2][k] - before[2][k] for k in names}
        scales = grad_scales(update64)
        unforked = after[3] is after[4] and before[3] is before[4]
        float32_updates = (torch_cfg or cfg).eps >= 1e-6 or cfg.name == "sgd"
        for key in checked:
            d32, t32_update, d_n = (np.subtract(after[i][key], before[i][key], dtype=np.float64)
                                    for i in (0, 1, 4))
            d_s = d_n if unforked else np.subtract(after[3][key], before[3][key],
                                                   dtype=np.float64)
            # jaxcnn float64's step against torch float64's, own scale
            diff = assert_close(d_n, update64[key],
                                f"{where}: update of parameter {key} (float64)", TRAJ_RTOL,
                                scales[key])
            if record:
                _record(case, "optimizer steps (updates, float64: jaxcnn vs torch)", diff,
                        tolerance(update64[key], TRAJ_RTOL, scales[key]))
            if not float32_updates:
                continue
            # own scale, plus float32's rounding of the stored new weights
            tol = (tolerance(update64[key], scale=scales[key])
                   + F32_EPS * float(np.max(np.abs(before[2][key]), initial=0.0)))
            tol += gain[key]  # plus the gradients' tolerance through Adam's gain on them
            _check(case, d32, t32_update, update64[key], f"{where}: update of parameter {key}",
                   tol, record, "updates", reference=d_s)
            _BOUNDS[key] = tol
        if _BOUNDS:
            power = min(power, max(float(np.max(np.abs(update64[k])))
                                   / max(_BOUNDS[k], 1e-300) for k in checked))
        _BOUNDS.clear()
        before = after
    if record:
        FLIPS[(case.id, f"trajectory {cfg.name}")] = flips
    return power


def _cancelled(tm: torch.nn.Module) -> dict[str, tuple[str, float]]:
    """The one named exception of the trajectory checks, for Adam and AdamW: the biases that
    feed straight into a BatchNorm (``bn_cancelled_pairs``, found structurally; lenet_bn's
    ``0.bias 4.bias 9.bias 12.bias``). Train-mode BatchNorm subtracts the batch mean, so their
    exact gradient is zero (asserted every step on the float64 referee) and each framework's is
    its own float32 rounding noise; Adam divides by ``sqrt(v) + eps`` and turns that noise into
    steps of up to ~lr, in a different direction in each framework (and in float64). Their
    values and updates are therefore not compared; their effect is: the loss and the batch
    statistics don't depend on them (checked every step), and the running mean of the BatchNorm
    after each is compared less its EMA of that side's own bias values (the running mean is the
    only state the bias reaches). Maps bias -> (running-mean key, weight of a new batch mean)."""
    out = {}
    modules = dict(tm.named_modules())
    for bias, bn_name in bn_cancelled_pairs(tm).items():
        bn = modules[bn_name]
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            assert bn.momentum is not None, bn_name
            out[bias] = (f"{bn_name}.running_mean", float(bn.momentum))
        else:  # the book's BatchNorm: moving_mean = 0.9 * moving_mean + 0.1 * mean
            out[bias] = (f"{bn_name}.moving_mean", 0.1)
    return out


#: The bound of each parameter's update check of the step, for the update-size ratio.
_BOUNDS: dict[str, float] = {}


def _check(case: Case, jax_value: Any, t32: Any, t64: Any, what: str, tol: float,
           record: bool = True, kind: str = "values", reference: Any = None) -> None:
    """``assert_referee`` (against ``reference``, the same-branch float64 side); the diff is
    recorded (largest share of its bound per case)."""
    diff, bound = assert_referee(jax_value, t32, t64, what, tol, reference=reference)
    if record:
        _record(case, f"optimizer steps ({kind}, float32 vs float64)", diff, bound)


def _exact(case: Case, jax64: Any, t64: Any, what: str, record: bool = True) -> None:
    """jaxcnn float64 against torch float64, values rule at ``TRAJ_RTOL``."""
    diff = assert_close(jax64, t64, f"{what} (float64)", TRAJ_RTOL)
    if record:
        _record(case, "optimizer steps (values, float64: jaxcnn vs torch)", diff,
                tolerance(t64, TRAJ_RTOL))


def _record(case: Case, check: str, diff: float, bound: float) -> None:
    old = DIFFS.get((case.id, check))
    if old is None or diff / bound > old[0] / old[1]:
        DIFFS[(case.id, check)] = (diff, bound)


@pytest.mark.parametrize(("case", "opt_name"),
                         [pytest.param(c, o, id=f"{c.id}-{o}") for c, o in RUNS])
def test_optimizer_steps_match_torch(case: Case, opt_name: str) -> None:
    power = _train_both(case, OPTIMIZERS[opt_name])
    assert power >= MIN_POWER, (f"{case.id}-{opt_name}: a step's largest update is only "
                                f"{power:.1f}x its update check's bound")


@pytest.mark.parametrize("case", [LENET, *BN_CASES], ids=lambda c: c.id)
def test_book_adam_with_default_eps(case: Case) -> None:
    """The book's optimizer as it is (Adam, lr 1e-3, eps 1e-8) on LeNet and both lenet_bn
    kinds (where the BN-cancelled biases move on rounding noise alone: the referee judges)."""
    _train_both(case, OptimizerConfig(name="adam", lr=1e-3))


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
    with pytest.raises(AssertionError, match="max \\|") as err:
        _train_both(LENET, cfg, torch_cfg)
    PLANTED_FAILURES[f"trajectory: torch {name}"] = str(err.value).splitlines()[0]


@dataclasses.dataclass(frozen=True)
class _PlantGrads:
    """A planted error in jaxcnn's gradients: parameter ``path`` (flax path, '/'-joined)
    times ``factor``; on the float32 side only, or on all of jaxcnn's sides (an error in
    jaxcnn's backward pass, which its float64 run shares)."""

    path: str
    factor: float
    float32_only: bool

    def __call__(self, grads: Any, float64: bool) -> Any:
        if float64 and self.float32_only:
            return grads

        def scale(path: Any, g: Any) -> Any:
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            return g * self.factor if name == self.path else g

        return jax.tree_util.tree_map_with_path(scale, grads)


def _bn_momentum(momentum: float) -> Any:
    """A planted error on the torch side: every ``nn.BatchNorm`` with another momentum (as if
    jaxcnn's BatchNorm used 0.1 where torch uses ``momentum``)."""

    def plant(tm: torch.nn.Module) -> None:
        for m in tm.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = momentum

    return plant


LENET_BN = next(c for c in BN_CASES if dict(c.config)["bn"] == "torch")
#: name -> (case, jaxcnn setting, torch setting, plant, steps): one-detail errors the trajectory
#: check must catch, on the cheap models.
PLANTED_ERRORS: dict[str, tuple[Case, str, str | None, Any, int]] = {
    # jaxcnn's backward pass (float32 and float64) off by 1% in one layer's weight gradient
    "grad_x1.01_all_precisions": (LENET, "sgd_momentum_wd_step", None,
                                  _PlantGrads("conv/0/kernel", 1.01, False), 3),
    # the same, in float32 only (caught by the float32 check against the same-branch referee)
    "grad_x1.01_float32_only": (LENET, "adam_wd_step", None,
                                _PlantGrads("conv/0/kernel", 1.01, True), 3),
    # Adam's eps 1e-3 on jaxcnn's side, 1.1e-3 on torch's
    "adam_eps": (LENET, "adam_wd_step", "adam_eps_1.1e-3", None, 3),
    # BatchNorm momentum 0.1 against 0.11
    "bn_momentum": (LENET_BN, "sgd", None, _bn_momentum(0.11), 2),
    # momentum 0.9 against 0.8
    "momentum": (LENET, "sgd_momentum_wd_step", "sgd_momentum_0.8", None, 2),
}
_TORCH_SETTINGS = {
    "adam_eps_1.1e-3": dataclasses.replace(OPTIMIZERS["adam_wd_step"], eps=1.1e-3),
    "sgd_momentum_0.8": dataclasses.replace(OPTIMIZERS["sgd_momentum_wd_step"], momentum=0.8),
}


@pytest.mark.parametrize("name", list(PLANTED_ERRORS))
def test_a_planted_error_is_caught(name: str) -> None:
    """Each planted error fails the trajectory check within its steps; the failure message is
    kept in ``PLANTED_FAILURES`` and printed in the summary."""
    case, opt, torch_opt, plant, steps = PLANTED_ERRORS[name]
    torch_cfg = _TORCH_SETTINGS[torch_opt] if torch_opt else None
    with pytest.raises(AssertionError, match="max \\|") as err:
        _train_both(case, OPTIMIZERS[opt], torch_cfg, steps=steps, plant=plant)
    PLANTED_FAILURES[f"trajectory: {name}"] = str(err.value).splitlines()[0]


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
