"""Checkpoints with orbax: ``WORKDIR/checkpoints/<epoch>/{state, meta}``.

Each save is atomic (orbax writes a temporary directory and renames it when complete; an
interrupted save leaves the previous checkpoints as they were). ``state`` holds the full
:class:`~jaxcnn.training.TrainState` pytree; ``meta`` is JSON: ``epoch``, ``history`` (the
:class:`~jaxcnn.training.EpochStats` dicts so far) and ``config``
(:meth:`~jaxcnn.training.TrainConfig.to_dict`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from ._loop import EpochStats
from ._state import TrainState
from .config import TrainConfig
from .steps import all_finite

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


class CheckpointError(RuntimeError):
    """A workdir without a (readable) checkpoint, or one that does not fit the request."""


def _quiet_absl() -> None:
    logging.getLogger("absl").setLevel(logging.WARNING)


def checkpoint_dir(workdir: str | os.PathLike[str]) -> Path:
    return Path(workdir).absolute() / CHECKPOINT_DIR


def _finished_steps(directory: Path) -> list[int]:
    """Epochs with a complete checkpoint (orbax's temporary directories are not digits)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / "meta").is_dir())


def latest_epoch(workdir: str | os.PathLike[str]) -> int | None:
    """The epoch of the newest complete checkpoint in ``workdir``, or ``None``."""
    steps = _finished_steps(checkpoint_dir(workdir))
    return steps[-1] if steps else None


class Checkpoints:
    """The checkpoints of one workdir (keeps the newest ``keep``)."""

    def __init__(self, workdir: str | os.PathLike[str], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        _quiet_absl()
        self.directory = checkpoint_dir(workdir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def save(self, epoch: int, state: TrainState, history: list[EpochStats],
             config: TrainConfig, extra: dict[str, Any] | None = None) -> None:
        """Save ``state`` after ``epoch`` (``extra``: more JSON metadata); refuses a
        non-finite state."""
        if not bool(all_finite((state.params, state.batch_stats, state.opt_state))):
            raise FloatingPointError(f"refusing to checkpoint a non-finite state (epoch {epoch})")
        meta = {"epoch": epoch, "history": [h.to_dict() for h in history],
                "config": config.to_dict(), **(extra or {})}
        self._manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def read_meta(self, epoch: int | None = None) -> dict[str, Any]:
        """The JSON metadata of ``epoch`` (default: the latest)."""
        epoch = self._epoch(epoch)
        return self._manager.restore(
            epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def restore(self, template: TrainState,
                epoch: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """``(state, meta)`` of ``epoch`` (default: the latest). ``template`` is a state of the
        same model and optimizer (e.g. freshly created): it gives the pytree structure, shapes
        and the static ``apply_fn``/``tx``."""
        epoch = self._epoch(epoch)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            restored = self._manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {self.directory / str(epoch)} does not fit this "
                                  f"model/optimizer: {e}") from e
        return restored.state, restored.meta

    def _epoch(self, epoch: int | None) -> int:
        if epoch is None:
            epoch = self._manager.latest_step()
            if epoch is None:
                raise CheckpointError(f"no checkpoint in {self.directory}")
        elif epoch not in self._manager.all_steps():
            raise CheckpointError(f"no checkpoint of epoch {epoch} in {self.directory} "
                                  f"(have {self._manager.all_steps()})")
        return epoch

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_meta(workdir: str | os.PathLike[str], epoch: int | None = None) -> dict[str, Any]:
    """The metadata of the latest checkpoint of ``workdir`` (cheap: no arrays are read)."""
    if latest_epoch(workdir) is None:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir(workdir)}")
    with Checkpoints(workdir) as ckpt:
        return ckpt.read_meta(epoch)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics(workdir: str | os.PathLike[str], history: list[EpochStats]) -> Path:
    """(Re)write ``WORKDIR/metrics.jsonl``: one JSON record per epoch, atomically."""
    path = Path(workdir) / METRICS_FILE
    _write_atomic(path, "".join(json.dumps(h.to_dict()) + "\n" for h in history))
    return path


def write_config(workdir: str | os.PathLike[str], config: TrainConfig) -> Path:
    """``WORKDIR/config.json``, for people (the checkpoints carry their own copy)."""
    path = Path(workdir) / CONFIG_FILE
    _write_atomic(path, json.dumps(config.to_dict(), indent=2) + "\n")
    return path
