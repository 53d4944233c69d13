"""Training: the jitted optax step, the book's loop, checkpoints and presets.

- :class:`TrainState` / :func:`create_train_state`: one pytree of params, BN stats, optimizer
  state and dropout key.
- :func:`train_step` (one update per call) / :func:`train_scan` (K updates per call,
  ``lax.scan``) / :func:`eval_step` / :func:`evaluate_accuracy`: jitted, preprocessing
  (uint8 -> float NHWC, optional resize) inside.
- :class:`TrainConfig`, :data:`PRESETS` and :func:`resolve_config` (preset or model plus
  overrides -> config), used by every command.
- :class:`OptimizerConfig` / :func:`make_optimizer`: sgd, adam, adamw and per-epoch schedules
  with torch.optim semantics.
- :func:`fit` (the book's ``train_ch5``) and :func:`train` (a whole run in a workdir, with
  orbax checkpoints, ``metrics.jsonl``, resume and curves).
"""

from ._checkpoint import (
    CheckpointError,
    Checkpoints,
    CheckpointWriteError,
    DamagedCheckpoint,
    latest_epoch,
    read_meta,
    write_metrics,
)
from ._lock import WorkdirLock, WorkdirLocked, check_workdir
from ._loop import EpochStats, NonFiniteError, evaluate_accuracy, fit, train_epoch
from ._optim import (
    OPTIMIZERS,
    SCHEDULES,
    OptimizerConfig,
    epoch_learning_rates,
    lr_schedule,
    make_optimizer,
)
from ._plot import plot_history
from ._run import RunResult, init_state, load_checkpoint, precompile, train
from ._state import TrainState, create_train_state, variables_of
from .config import (
    PRECISIONS,
    PRESETS,
    TrainConfig,
    default_preset,
    default_resize,
    resolve_config,
    resume_conflicts,
)
from .steps import (
    auto_steps_per_call,
    chunk_indices,
    count_correct_scan,
    epoch_blocks,
    eval_step,
    train_scan,
    train_step,
    update,
)

__all__ = [
    "OPTIMIZERS",
    "PRECISIONS",
    "PRESETS",
    "SCHEDULES",
    "CheckpointError",
    "CheckpointWriteError",
    "Checkpoints",
    "DamagedCheckpoint",
    "EpochStats",
    "NonFiniteError",
    "OptimizerConfig",
    "RunResult",
    "TrainConfig",
    "TrainState",
    "WorkdirLock",
    "WorkdirLocked",
    "auto_steps_per_call",
    "check_workdir",
    "chunk_indices",
    "count_correct_scan",
    "create_train_state",
    "default_preset",
    "default_resize",
    "epoch_blocks",
    "epoch_learning_rates",
    "eval_step",
    "evaluate_accuracy",
    "fit",
    "init_state",
    "latest_epoch",
    "load_checkpoint",
    "lr_schedule",
    "make_optimizer",
    "plot_history",
    "precompile",
    "read_meta",
    "resolve_config",
    "resume_conflicts",
    "train",
    "train_epoch",
    "train_scan",
    "train_step",
    "update",
    "variables_of",
    "write_metrics",
]
