"""A whole run: data, state, the loop, checkpoints, metrics and curves in a workdir."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .. import distributed
from ..data import DeviceDataset, load_splits, num_batches, split_sizes
from ..models import build_model
from ..ops.host_random import seed_key
from ..registry import get_spec
from . import _programs
from ._checkpoint import CheckpointError, Checkpoints, write_config, write_metrics
from ._lock import WorkdirLock
from ._loop import Dataset, EpochStats, eval_blocks, fit, scan_steps_per_call
from ._optim import epoch_learning_rates, make_optimizer
from ._plot import plot_history
from ._state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    precompile_init,
    variables_of,
)
from .config import TrainConfig, resume_conflicts
from .steps import (
    count_correct_blocks,
    count_correct_scan,
    epoch_blocks,
    train_blocks,
    train_scan,
)

PLOT_FILE = "curves.png"


@dataclasses.dataclass
class RunResult:
    """The outcome of :func:`train`: final state, the per-epoch history, the model."""

    state: TrainState
    history: list[EpochStats]
    model: nn.Module
    config: TrainConfig


@functools.lru_cache(maxsize=16)
def _model_and_tx(config_json: str, steps_per_epoch: int) -> tuple[nn.Module, Any]:
    # One model/optimizer object per configuration: the jitted steps take them as static
    # arguments, so equal runs in one process share their compilations.
    config = TrainConfig.from_dict(json.loads(config_json))
    return (build_model(config.model_cfg()),
            make_optimizer(config.optimizer, steps_per_epoch, config.epochs))


def _model_tx_shape(config: TrainConfig, steps_per_epoch: int
                    ) -> tuple[nn.Module, Any, tuple[int, int, int, int], str | None]:
    """The model, the optimizer, the init input shape, and the identity of the programs they
    make (the configuration that builds both, for :func:`_programs.precompile`). A model
    registered from outside this package has none: its code is not part of the program
    store's key (:mod:`._store`), so its programs are not kept across processes."""
    key = dict(config.to_dict(), seed=0, limit_train=None, limit_test=None)
    if config.optimizer.schedule == "constant":  # the optimizer does not depend on them
        key["epochs"], steps_per_epoch = 1, 1
    identity = json.dumps(key, sort_keys=True)
    model, tx = _model_and_tx(identity, steps_per_epoch)
    in_channels = config.model_cfg().in_channels
    ours = all(getattr(x, "__module__", "").startswith("jaxcnn.")
               for x in (get_spec(config.model).build, type(config.model_cfg())))
    return (model, tx, (1, config.input_size, config.input_size, in_channels),
            f"{identity} steps_per_epoch={steps_per_epoch}" if ours else None)


def init_state(config: TrainConfig, steps_per_epoch: int) -> tuple[nn.Module, TrainState]:
    """The model of ``config`` and its fresh state (``PRNGKey(seed)``, torch-default init),
    replicated over the devices of :mod:`jaxcnn.distributed` (the same values on every count)."""
    model, tx, shape, _ = _model_tx_shape(config, steps_per_epoch)
    state = create_train_state(model, seed_key(config.seed), shape, tx)
    return model, distributed.put_replicated(state)


def precompile(config: TrainConfig, train_size: int, test_size: int,
               steps_per_call: int | None = None, image_shape: tuple[int, int] = (28, 28)
               ) -> None:
    """Start compiling, in the background, every program a run of ``config`` on
    ``train_size``/``test_size`` examples needs (the training calls with the partial last batch
    padded into them (with several processes: one more call), init, the test pass), so that
    they compile while the data loads and the first steps run; the run then uses them
    (:mod:`jaxcnn.training._programs`). Only shapes are needed. The first training program
    goes first: it is the longest to compile and the first step waits for it, while init
    (compiled beside it) is short and the test pass comes at the epoch's end."""
    bs = config.batch_size
    model, tx, input_shape, identity = _model_tx_shape(config, num_batches(train_size, bs))
    everywhere = distributed.replicated()
    state = distributed.abstract(abstract_train_state(model, input_shape, tx), everywhere)
    static = {"resize": config.resize, "precision": config.precision}

    def data(n: int) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
        return (jax.ShapeDtypeStruct((n, *image_shape), jnp.uint8, sharding=everywhere),
                jax.ShapeDtypeStruct((n,), jnp.int32, sharding=everywhere))

    def block(shape: tuple[int, ...], dtype: Any = jnp.int32) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, dtype,
                                    sharding=distributed.batch_sharding(shape, axis=1))

    per_process = distributed.is_multi_process()  # gathered blocks, not indices

    def images(shape: tuple[int, int]) -> jax.ShapeDtypeStruct:
        return block((*shape, *image_shape), jnp.uint8)

    trainers: list[tuple[Any, tuple[Any, ...], str | None]] = []  # (program, args, identity)
    k = steps_per_call or scan_steps_per_call(train_size, bs, per_process)
    if per_process:  # full blocks, then the partial last batch as one more call
        full, rest = divmod(train_size, bs)
        blocks = {k} if full >= k else set()
        if full % k:
            blocks.add(full % k)
        for rows, width in [*((b, bs) for b in blocks), *([(1, rest)] if rest else [])]:
            trainers.append((train_blocks, (state, images((rows, width)), block((rows, width))),
                             None))
    else:  # every batch, the partial last one padded (epoch_blocks): usually one program
        if k > 1 or distributed.mesh() is not None:  # else train_step, batch by batch
            blocks = epoch_blocks(np.zeros(train_size, np.int32), bs, k)
            for shape in dict.fromkeys(idx.shape for idx, _ in blocks):  # in order, once
                trainers.append((train_scan, (state, *data(train_size), block(shape),
                                              block(shape, jnp.float32)), identity))
    for program, args, key in trainers[:1]:  # none: train_step batch by batch, by jit
        _programs.precompile(program, *args, identity=key, **static)
    precompile_init(model, input_shape, tx, identity)
    for program, args, key in trainers[1:]:
        _programs.precompile(program, *args, identity=key, **static)
    idx, _ = eval_blocks(test_size, bs)
    variables = variables_of(state.params, state.batch_stats)
    if per_process:
        _programs.precompile(count_correct_blocks, variables, images(idx.shape),
                             block(idx.shape), block(idx.shape, jnp.bool_),
                             apply_fn=model.apply, **static)
    else:
        _programs.precompile(count_correct_scan, variables, *data(test_size), block(idx.shape),
                             block(idx.shape, jnp.bool_), identity=identity,
                             apply_fn=model.apply, **static)


def _template_of(meta: dict[str, Any]) -> TrainState:
    config = TrainConfig.from_dict(meta["config"])
    return init_state(config, int(meta.get("steps_per_epoch", 1)))[1]


def load_checkpoint(workdir: str | os.PathLike[str], epoch: int | None = None,
                    log: Callable[[str], None] | None = None,
                    ) -> tuple[nn.Module, TrainState, dict[str, Any]]:
    """``(model, state, meta)`` of a workdir's checkpoint, verified against its digests;
    ``meta`` has ``epoch``, ``history`` and ``config`` (a dict; :meth:`TrainConfig.from_dict`).

    ``epoch=None``: the newest checkpoint that verifies; each newer damaged one is reported to
    ``log`` (default: stderr). A given ``epoch`` that is damaged raises
    :class:`~jaxcnn.training.DamagedCheckpoint`."""
    if log is None:
        def log(s: str) -> None:
            print(s, file=sys.stderr, flush=True)
    with Checkpoints(workdir) as ckpt:
        if epoch is None:
            state, meta, _ = ckpt.restore_newest_good(_template_of, log)
        else:
            state, meta = ckpt.restore(_template_of(ckpt.read_meta(epoch)), epoch)
    model, _ = init_state(TrainConfig.from_dict(meta["config"]),
                          int(meta.get("steps_per_epoch", 1)))
    return model, state, meta


def _continue_with(restored: TrainState, fresh: TrainState, log: Callable[[str], None] | None
                   ) -> TrainState:
    """The restored state under ``fresh``'s optimizer: its optimizer state is kept when it has
    the same structure (e.g. only the learning rate changed), else re-initialised."""
    same = (jax.tree.structure(restored.opt_state) == jax.tree.structure(fresh.opt_state)
            and all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(
                jax.tree.leaves(restored.opt_state), jax.tree.leaves(fresh.opt_state),
                strict=True)))
    opt_state = restored.opt_state if same else fresh.tx.init(restored.params)
    if not same and log:
        log("the optimizer changed: its state (momentum/moments) starts afresh")
    return fresh.replace(step=restored.step, params=restored.params,
                         batch_stats=restored.batch_stats, opt_state=opt_state,
                         dropout_key=restored.dropout_key)


def train(config: TrainConfig, workdir: str | os.PathLike[str] | None = None, *,
          resume: bool = False, keep: int = 3, data_dir: str | os.PathLike[str] | None = None,
          plot: bool = False, log: Callable[[str], None] | None = print, log_every: int = 0,
          progress: bool | None = None,
          datasets: tuple[Dataset, Dataset] | None = None, steps_per_call: int | None = None,
          allow_optimizer_change: bool = False,
          on_step: Callable[[int, dict[str, float]], None] | None = None) -> RunResult:
    """Train ``config`` as the book does, checkpointing every epoch into ``workdir``.

    With ``workdir``: ``checkpoints/<epoch>`` (the newest ``keep``), ``metrics.jsonl``,
    ``config.json`` and, with ``plot``, ``curves.png``. ``resume`` continues from the latest
    checkpoint that verifies (damaged newer ones are moved to ``WORKDIR/damaged/``); its
    config must equal ``config`` except for more ``epochs`` and, with
    ``allow_optimizer_change``, the optimizer and schedule (the optimizer state is kept when
    its structure allows). Without ``resume`` a workdir that already has checkpoints is
    refused. The workdir is locked for the whole run (:class:`WorkdirLock`). ``datasets``
    replaces Fashion-MNIST (``(train, test)``, e.g. synthetic ones). ``log_every=N`` logs
    every N-th step's loss; ``on_step(global_step, {'loss', 'epoch', 'batch'})`` is called
    after every step (:func:`~jaxcnn.training.train_epoch`).
    ``steps_per_call=K`` runs K updates per compiled call (default: chosen per epoch length,
    :func:`~jaxcnn.training.train_epoch`; the same updates as one by one).
    Raises :class:`CheckpointError` and :class:`~jaxcnn.training.NonFiniteError`.
    """
    if (resume or plot) and workdir is None:
        raise CheckpointError("resume and plot need a workdir")
    main = distributed.is_main_process()  # only process 0 locks and writes metrics/plots
    lock = WorkdirLock(workdir, notice=log) if workdir is not None and main else None
    if lock is not None:
        lock.acquire()
    ckpt = None
    try:
        ckpt = Checkpoints(workdir, keep) if workdir is not None else None
        latest = ckpt.latest_epoch() if ckpt else None
        if resume and latest is None:
            raise CheckpointError(f"nothing to resume: no checkpoint in {ckpt.directory}")
        if not resume and latest is not None:
            raise CheckpointError(f"{workdir} already holds checkpoints (latest epoch {latest}); "
                                  f"pass --resume to continue, or pick a new --workdir")
        restored = meta = None
        if resume:
            restored, meta, damaged = ckpt.restore_newest_good(_template_of, log)
            latest = meta["epoch"]
            saved = TrainConfig.from_dict(meta["config"])
            problems = resume_conflicts(saved, config, latest,
                                        allow_optimizer_change=allow_optimizer_change)
            if problems:
                raise CheckpointError(f"cannot resume {workdir} with these settings:\n  "
                                      + "\n  ".join(problems))
            if damaged:
                aside = ckpt.set_aside([d.epoch for d in damaged])
                if log:
                    log(f"moved the damaged checkpoint(s) of epoch "
                        f"{', '.join(str(d.epoch) for d in damaged)} to {aside}")

        distributed.check_batch_size(config.batch_size)
        sizes = ((len(datasets[0]), len(datasets[1])) if datasets is not None else
                 split_sizes(config.limit_train, config.limit_test))
        precompile(config, *sizes, steps_per_call)  # compiles while the data loads
        train_ds, test_ds = datasets or DeviceDataset.splits(load_splits(
            data_dir, limit_train=config.limit_train, limit_test=config.limit_test))
        steps_per_epoch = num_batches(len(train_ds), config.batch_size)
        model, state = init_state(config, steps_per_epoch)
        history: list[EpochStats] = []
        if resume:
            if meta.get("steps_per_epoch", steps_per_epoch) != steps_per_epoch:
                raise CheckpointError(f"the checkpoint had {meta['steps_per_epoch']} steps per "
                                      f"epoch, this data gives {steps_per_epoch}")
            state = distributed.put_replicated(_continue_with(restored, state, log))
            history = [EpochStats(**h) for h in meta["history"]]
            if main:
                write_metrics(workdir, history)
            if log:
                log(f"resumed {workdir} at epoch {latest} (global step {int(state.step)})")
        if workdir is not None and main:
            Path(workdir).mkdir(parents=True, exist_ok=True)
            write_config(workdir, config)

        def on_epoch_end(state: TrainState, history: list[EpochStats]) -> None:
            if ckpt is None:
                return
            ckpt.save(history[-1].epoch, state, history, config,
                      extra={"steps_per_epoch": steps_per_epoch})  # all processes (orbax)
            if main:
                write_metrics(workdir, history)

        def each_step(step: int, m: dict[str, float]) -> None:
            if on_step is not None:
                on_step(step, m)
            if log and log_every and step % log_every == 0:
                log(f"step {step} (epoch {m['epoch']}, batch {m['batch']}/{steps_per_epoch}): "
                    f"loss {m['loss']:.4f}")

        lrs = epoch_learning_rates(config.optimizer, config.epochs)
        state, history = fit(
            state, train_ds, test_ds, epochs=config.epochs, batch_size=config.batch_size,
            resize=config.resize, seed=config.seed, history=history,
            lr_of_epoch=lambda e: lrs[min(e, len(lrs) - 1)], on_epoch_end=on_epoch_end,
            on_step=each_step, log=log, progress=progress, steps_per_call=steps_per_call,
            precision=config.precision)
    finally:
        if ckpt is not None:
            ckpt.close()
        if lock is not None:
            lock.release()
    if plot and history and main:
        path = plot_history(history, Path(workdir) / PLOT_FILE, title=config.model)
        if log:
            log(f"curves: {path}")
    return RunResult(state, history, model, config)
