"""Training: the jitted optax step, the book's loop, checkpoints and presets.

- :class:`TrainState` / :func:`create_train_state`: one pytree of params, BN stats, optimizer
  state and dropout key.
- :func:`train_step` / :func:`eval_step` / :func:`evaluate_accuracy`: jitted, preprocessing
  (uint8 -> float NHWC, optional resize) inside.
- :class:`OptimizerConfig` / :func:`make_optimizer`: sgd, adam, adamw and per-epoch schedules
  with torch.optim semantics.
- :func:`fit` (the book's ``train_ch5``) and :func:`train` (a whole run in a workdir, with
  orbax checkpoints, ``metrics.jsonl``, resume and curves).
"""

from ._checkpoint import (
    CheckpointError,
    Checkpoints,
    latest_epoch,
    read_meta,
    write_metrics,
)
from ._config import (
    PRECISIONS,
    PRESETS,
    TrainConfig,
    default_resize,
    get_preset,
    resume_conflicts,
)
from ._loop import (
    EpochStats,
    NonFiniteError,
    eval_step,
    evaluate_accuracy,
    fit,
    train_epoch,
    train_step,
)
from ._multistep import chunk_indices, train_steps
from ._optim import (
    OPTIMIZERS,
    SCHEDULES,
    OptimizerConfig,
    epoch_learning_rates,
    lr_schedule,
    make_optimizer,
)
from ._plot import plot_history
from ._run import RunResult, init_state, load_checkpoint, load_datasets, train
from ._state import TrainState, create_train_state, variables_of
from ._step import TRACE_COUNTS, update

__all__ = [
    "OPTIMIZERS",
    "PRECISIONS",
    "PRESETS",
    "SCHEDULES",
    "TRACE_COUNTS",
    "CheckpointError",
    "Checkpoints",
    "EpochStats",
    "NonFiniteError",
    "OptimizerConfig",
    "RunResult",
    "TrainConfig",
    "TrainState",
    "chunk_indices",
    "create_train_state",
    "default_resize",
    "epoch_learning_rates",
    "eval_step",
    "evaluate_accuracy",
    "fit",
    "get_preset",
    "init_state",
    "latest_epoch",
    "load_checkpoint",
    "load_datasets",
    "lr_schedule",
    "make_optimizer",
    "plot_history",
    "read_meta",
    "resume_conflicts",
    "train",
    "train_epoch",
    "train_step",
    "train_steps",
    "update",
    "variables_of",
    "write_metrics",
]
