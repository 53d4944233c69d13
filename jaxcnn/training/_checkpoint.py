"""Checkpoints with orbax: ``WORKDIR/checkpoints/<epoch>/{state, meta}``.

Each save is atomic (orbax writes a temporary directory and renames it when complete; an
interrupted save leaves the previous checkpoints as they were). ``state`` holds the full
:class:`~jaxcnn.training.TrainState` pytree; ``meta`` is JSON: ``epoch``, ``history`` (the
:class:`~jaxcnn.training.EpochStats` dicts so far) and ``config``
(:meth:`~jaxcnn.training.TrainConfig.to_dict`) and ``digests`` (sha256 of every array of the
state and of the rest of the metadata, checked on every read).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ._loop import EpochStats
from ._state import TrainState
from .config import TrainConfig
from .steps import all_finite


def _orbax() -> Any:
    """``orbax.checkpoint``, imported on first use: a run without a workdir never needs it (its
    import was 0.16 s of ``jaxcnn train``'s start-up)."""
    import orbax.checkpoint

    return orbax.checkpoint

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
DIGESTS = "digests"


class CheckpointError(RuntimeError):
    """A workdir without a (readable) checkpoint, or one that does not fit the request."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint that cannot be read or whose arrays do not match their digests; ``epoch``
    names it."""

    def __init__(self, message: str, epoch: int) -> None:
        super().__init__(message)
        self.epoch = epoch


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, permissions, ...); the earlier ones are
    intact. ``errno`` is the OS error number when one was found, else ``None``."""

    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


def _quiet_absl() -> None:
    logging.getLogger("absl").setLevel(logging.WARNING)


def checkpoint_dir(workdir: str | os.PathLike[str]) -> Path:
    return Path(workdir).absolute() / CHECKPOINT_DIR


def _finished_steps(directory: Path) -> list[int]:
    """Epochs with a checkpoint directory (orbax's temporary directories are not digits; a
    checkpoint with parts missing is listed, and found damaged when read)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def latest_epoch(workdir: str | os.PathLike[str]) -> int | None:
    """The epoch of the newest checkpoint in ``workdir``, or ``None``."""
    steps = _finished_steps(checkpoint_dir(workdir))
    return steps[-1] if steps else None


def _leaf_digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def state_digests(state: Any) -> dict[str, str]:
    """``{pytree path: sha256}`` of every array of ``state`` (dtype, shape and bytes)."""
    paths_leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    host = jax.device_get([leaf for _, leaf in paths_leaves])
    return {jax.tree_util.keystr(path): _leaf_digest(np.asarray(a))
            for (path, _), a in zip(paths_leaves, host, strict=True)}


def _meta_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != DIGESTS}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _os_error(e: BaseException) -> tuple[int | None, str]:
    """The errno and strerror of the first OSError in ``e``'s chain, else from its text."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen.errno, seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(e)
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
        if os.strerror(code) in text:
            return code, os.strerror(code)
    return None, text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__


def _short(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


class Checkpoints:
    """The checkpoints of one workdir (keeps the newest ``keep``).

    Every save stores a sha256 digest of each array of the state, and one of the metadata,
    in the metadata (``meta['digests']``); every read checks them: a checkpoint that cannot
    be read or does not match raises :class:`DamagedCheckpoint`. :meth:`restore_newest_good`
    falls back to the newest checkpoint that verifies."""

    def __init__(self, workdir: str | os.PathLike[str], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        _quiet_absl()
        self.workdir = Path(workdir)
        self.directory = checkpoint_dir(workdir)
        ocp = _orbax()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as e:
            raise CheckpointError(f"cannot open the checkpoints in {self.directory}: "
                                  f"{e.strerror or e}") from e

    def epochs(self) -> list[int]:
        """The epochs with a checkpoint directory, oldest first (not yet verified)."""
        return _finished_steps(self.directory)

    def latest_epoch(self) -> int | None:
        steps = self.epochs()
        return steps[-1] if steps else None

    def save(self, epoch: int, state: TrainState, history: list[EpochStats],
             config: TrainConfig, extra: dict[str, Any] | None = None) -> None:
        """Save ``state`` after ``epoch`` (``extra``: more JSON metadata) with the digests of
        its arrays; refuses a non-finite state. A failed write (disk full, ...) raises
        :class:`CheckpointWriteError` and leaves the earlier checkpoints as they were."""
        if not bool(all_finite((state.params, state.batch_stats, state.opt_state))):
            raise FloatingPointError(f"refusing to checkpoint a non-finite state (epoch {epoch})")
        meta = {"epoch": epoch, "history": [h.to_dict() for h in history],
                "config": config.to_dict(), **(extra or {})}
        meta[DIGESTS] = {"algorithm": "sha256", "arrays": state_digests(state),
                         "meta": _meta_digest(meta)}
        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.CRITICAL)  # a failure is reported once, below, not per thread
        try:
            ocp = _orbax()
            self._manager.save(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
            self._manager.wait_until_finished()
        except Exception as e:
            # orbax's writer tasks would log the same error again when collected
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            self._remove_partial(epoch)
            code, reason = _os_error(e)
            fix = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
                   errno.EROFS: "use a writable --workdir",
                   errno.EACCES: "use a writable --workdir"}.get(code, "check the disk")
            kept = [s for s in self.epochs() if s != epoch]
            earlier = (f"the earlier checkpoints are intact (latest: epoch {kept[-1]}); "
                       f"{fix}, then continue with --resume" if kept
                       else f"no checkpoint was written; {fix} and start again")
            raise CheckpointWriteError(
                f"could not write the checkpoint of epoch {epoch} to {self.directory}: "
                f"{reason}; {earlier}", code) from e
        finally:
            absl.setLevel(level)

    def _remove_partial(self, epoch: int) -> None:
        for p in self.directory.glob(f"{epoch}.orbax-checkpoint-tmp*"):
            shutil.rmtree(p, ignore_errors=True)
        final = self.directory / str(epoch)
        if final.is_dir() and not (final / "_CHECKPOINT_METADATA").exists():
            shutil.rmtree(final, ignore_errors=True)

    def read_meta(self, epoch: int | None = None) -> dict[str, Any]:
        """The JSON metadata of ``epoch`` (verified against its digest); default: the newest
        checkpoint whose metadata reads and verifies."""
        if epoch is not None:
            return self._read_meta(self._epoch(epoch))
        errors = []
        for e in reversed(self.epochs()):
            try:
                return self._read_meta(e)
            except DamagedCheckpoint as err:
                errors.append(str(err))
        raise CheckpointError(f"no readable checkpoint in {self.directory}"
                              + "".join(f"\n  {m}" for m in errors))

    def _read_meta(self, epoch: int) -> dict[str, Any]:
        where = self.directory / str(epoch)
        if not (where / "meta").is_dir():
            raise DamagedCheckpoint(f"checkpoint {where} is incomplete: its meta/ is missing",
                                    epoch)
        ocp = _orbax()
        try:
            meta = self._manager.restore(
                epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as e:
            raise DamagedCheckpoint(f"checkpoint {where} is damaged: its metadata cannot be "
                                    f"read ({_short(e)})", epoch) from e
        if not isinstance(meta, dict) or "config" not in meta or "epoch" not in meta:
            raise DamagedCheckpoint(f"checkpoint {where} is damaged: its metadata lacks "
                                    f"'epoch' or 'config'", epoch)
        digests = meta.get(DIGESTS)
        if digests is not None and digests.get("meta") != _meta_digest(meta):
            raise DamagedCheckpoint(f"checkpoint {where} is damaged: its metadata does not "
                                    f"match its digest", epoch)
        return meta

    def restore(self, template: TrainState,
                epoch: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """``(state, meta)`` of ``epoch`` (default: the latest), verified against the
        digests. ``template`` is a state of the same model and optimizer (e.g. freshly
        created): it gives the pytree structure, shapes and the static ``apply_fn``/``tx``.
        Raises :class:`DamagedCheckpoint` for a checkpoint that cannot be read or does not
        verify."""
        epoch = self._epoch(epoch)
        meta = self._read_meta(epoch)
        where = self.directory / str(epoch)
        ocp = _orbax()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            restored = self._manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract)))
        except Exception as e:
            raise DamagedCheckpoint(f"checkpoint {where} is damaged or does not fit this "
                                    f"model/optimizer: {_short(e)}", epoch) from e
        state = restored.state
        digests = (meta.get(DIGESTS) or {}).get("arrays")
        if digests is not None:
            got = state_digests(state)
            if set(got) != set(digests):
                raise DamagedCheckpoint(
                    f"checkpoint {where} does not fit this model/optimizer (other arrays than "
                    f"were saved)", epoch)
            bad = [k for k in digests if digests[k] != got[k]]
            if bad:
                raise DamagedCheckpoint(
                    f"checkpoint {where} is damaged: {len(bad)} array(s) do not match their "
                    f"saved digests ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})",
                    epoch)
        return state, meta

    def restore_newest_good(
            self, template_of: Callable[[dict[str, Any]], TrainState],
            log: Callable[[str], None] | None = None,
    ) -> tuple[TrainState, dict[str, Any], list[DamagedCheckpoint]]:
        """``(state, meta, damaged)``: the newest checkpoint that reads and verifies
        (``template_of(meta)`` gives its template), and the newer ones that did not (each
        reported to ``log``). Raises :class:`CheckpointError` when none verifies."""
        damaged: list[DamagedCheckpoint] = []
        for epoch in reversed(self.epochs()):
            try:
                state, meta = self.restore(template_of(self._read_meta(epoch)), epoch)
            except DamagedCheckpoint as e:
                damaged.append(e)
                if log:
                    log(f"warning: {e}")
                continue
            if damaged and log:
                log(f"using epoch {epoch}, the newest checkpoint that verifies")
            return state, meta, damaged
        if not damaged:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        raise CheckpointError(f"no checkpoint in {self.directory} verifies (all "
                              f"{len(damaged)} are damaged); start a new run")

    def set_aside(self, epochs: list[int]) -> Path | None:
        """Move the checkpoints of ``epochs`` to ``WORKDIR/damaged/<epoch>-<time>`` (kept for
        inspection, out of the way of new saves); the directory they went to."""
        if not epochs:
            return None
        target = self.workdir / "damaged"
        target.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for e in epochs:
            src = self.directory / str(e)
            if src.exists():
                os.replace(src, target / f"{e}-{stamp}")
        self._manager.reload()
        return target

    def _epoch(self, epoch: int | None) -> int:
        steps = self.epochs()
        if epoch is None:
            if not steps:
                raise CheckpointError(f"no checkpoint in {self.directory}")
            return steps[-1]
        if epoch not in steps:
            raise CheckpointError(f"no checkpoint of epoch {epoch} in {self.directory} "
                                  f"(have {steps})")
        return epoch

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_meta(workdir: str | os.PathLike[str], epoch: int | None = None) -> dict[str, Any]:
    """The metadata of the newest checkpoint of ``workdir`` whose metadata verifies (or of
    ``epoch``); cheap: no arrays are read."""
    if latest_epoch(workdir) is None:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir(workdir)}")
    with Checkpoints(workdir) as ckpt:
        return ckpt.read_meta(epoch)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
