"""The jitted train/eval steps and the book's training loop (``train_ch5``).

Batches are uint8 images ``(B, 28, 28)`` and int32 labels ``(B,)`` on the device; the steps
preprocess them (``jaxcnn.data.preprocess``: ``[0, 1]`` floats, NHWC, optional resize) inside
the compiled function.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import numpy as np
from tqdm.auto import tqdm

from .. import distributed
from ..data import epoch_order, num_batches
from . import _programs
from ._state import TrainState
from .steps import (
    auto_steps_per_call,
    chunk_indices,
    count_correct,
    count_correct_blocks,
    count_correct_scan,
    epoch_blocks,
    train_blocks,
    train_scan,
    train_step,
)


class Dataset(Protocol):
    """What the loop needs of ``jaxcnn.data.DeviceDataset``."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0,
                epoch: int = 0) -> Iterable[tuple[jax.Array, jax.Array]]: ...


class NonFiniteError(FloatingPointError):
    """The loss or the state (parameters, BatchNorm statistics, optimizer state) became
    NaN/inf; ``step`` (1-based global step) and ``epoch``
    (1-based) name the first bad update."""

    def __init__(self, message: str, step: int, epoch: int) -> None:
        super().__init__(message)
        self.step, self.epoch = step, epoch


def _on_device(dataset: Dataset) -> tuple[jax.Array, jax.Array] | None:
    """``(images, labels)`` of a dataset held on the device (a ``DeviceDataset``), else None."""
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if isinstance(images, jax.Array) and isinstance(labels, jax.Array):
        return images, labels
    return None


def _per_process(dataset: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """``(images, labels)`` host arrays of a ``DeviceDataset`` of a multi-process run (each
    process reads its rows of every batch from them), else None."""
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if (distributed.is_multi_process() and isinstance(images, np.ndarray)
            and isinstance(labels, np.ndarray)):
        return images, labels
    return None


def scan_steps_per_call(n: int, batch_size: int, per_process: bool) -> int:
    """The default updates per call of an epoch of ``n`` examples held on the devices:
    :func:`~jaxcnn.training.auto_steps_per_call` of its batches, the partial last one
    included (padded into a call, :func:`~jaxcnn.training.epoch_blocks`); with several
    processes, of its full batches (the partial one is a call of its own there)."""
    return auto_steps_per_call(n // batch_size if per_process else num_batches(n, batch_size))


def eval_blocks(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The test pass as index blocks: int32 ``(K, B)`` indices ``0 .. n-1`` in order (the last
    block padded with index 0) and the bool ``(K, B)`` mask of the real ones."""
    k = num_batches(n, batch_size)
    flat = np.arange(k * batch_size)
    return (np.where(flat < n, flat, 0).astype(np.int32).reshape(k, batch_size),
            (flat < n).reshape(k, batch_size))


def _accuracy(apply_fn: Callable[..., Any], variables: Any, dataset: Dataset, batch_size: int,
              resize: int | None, precision: str = "float32") -> float:
    arrays, host = _on_device(dataset), _per_process(dataset)
    if host is not None:  # several processes: each reads its rows of every block
        blocks = distributed.put_local_blocks(*host, *eval_blocks(len(dataset), batch_size))
        total = int(_programs.call(count_correct_blocks, variables, *blocks, apply_fn=apply_fn,
                                   resize=resize, precision=precision))
    elif arrays is None:  # any iterable of batches: one call per batch
        counts = [count_correct(apply_fn, variables, x, y, resize, precision)
                  for x, y in dataset.batches(batch_size, shuffle=False)]
        total = int(np.sum(jax.device_get(counts), dtype=np.int64))
    else:  # the whole pass in one compiled call
        idx, valid = eval_blocks(len(dataset), batch_size)
        total = int(_programs.call(count_correct_scan, variables, *arrays,
                                   distributed.put_batch(idx), distributed.put_batch(valid),
                                   apply_fn=apply_fn, resize=resize,
                                   precision=precision))
    return total / len(dataset)


def evaluate_accuracy(model: nn.Module, variables: Any, dataset: Dataset, batch_size: int,
                      resize: int | None = None, precision: str = "float32") -> float:
    """Fraction of ``dataset`` with ``argmax(model(x), 1) == y`` in eval mode.

    ``variables`` is ``{'params': ..., 'batch_stats': ...}`` (batch_stats for BN models)."""
    return _accuracy(model.apply, variables, dataset, batch_size, resize, precision)


@dataclasses.dataclass(frozen=True)
class EpochStats:
    """One epoch's record (one line of ``metrics.jsonl``). ``epoch`` is 1-based; ``step`` is
    the global step at its end; ``time`` in seconds (training and test evaluation, as the book);
    ``images_per_sec`` the training throughput; ``lr`` the epoch's learning rate."""

    epoch: int
    loss: float
    train_acc: float
    test_acc: float
    time: float
    images_per_sec: float
    step: int
    lr: float | None = None

    def line(self) -> str:
        """The book's line: ``epoch 1, loss 0.xxxx, train acc 0.xxx, test acc 0.xxx, time x.x
        sec``."""
        return (f"epoch {self.epoch}, loss {self.loss:.4f}, train acc {self.train_acc:.3f}, "
                f"test acc {self.test_acc:.3f}, time {self.time:.1f} sec")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _non_finite(step: int, epoch: int, batch: int, nbatch: int, loss: float) -> NonFiniteError:
    where = f"global step {step} (epoch {epoch}, batch {batch} of {nbatch})"
    what = (f"non-finite loss ({loss}) at {where}" if not np.isfinite(loss) else
            f"the update of {where} made the state non-finite (parameters, BatchNorm "
            f"statistics or optimizer state; loss was {loss:.4g})")
    return NonFiniteError(
        f"training diverged: {what}. Nothing of epoch {epoch} was saved; lower the learning "
        f"rate (or change the optimizer/schedule), then start again or resume from the last "
        f"good checkpoint with --resume --change-optimizer --lr ...", step, epoch)


def train_epoch(state: TrainState, dataset: Dataset, *, batch_size: int, epoch: int,
                seed: int = 0, resize: int | None = None,
                on_step: Callable[[int, dict[str, float]], None] | None = None,
                progress: bool | None = None, steps_per_call: int | None = None,
                precision: str = "float32") -> tuple[TrainState, dict[str, float]]:
    """Train one epoch (``epoch`` 1-based; the shuffle order is ``(seed, epoch - 1)``).

    Returns the new state and ``{'loss': mean of the batch losses, 'train_acc': correct /
    examples, 'images': examples}``. Host syncs lag one step behind the device (the metrics of
    step ``i`` are read after step ``i + 1`` is queued), which also checks finiteness: a bad
    step raises :class:`NonFiniteError`. ``on_step(global_step, metrics)`` is called with each
    step's host metrics; ``progress`` shows a tqdm bar (default: when stderr is a TTY).

    A :class:`~jaxcnn.data.DeviceDataset` is trained ``steps_per_call`` updates per compiled
    call (:func:`~jaxcnn.training.train_scan`; default ``None``:
    :func:`~jaxcnn.training.auto_steps_per_call` of the epoch's batches), in the same order
    and with the same updates as one by one (to float rounding); the partial last batch is
    padded into the last call (:func:`~jaxcnn.training.epoch_blocks`: one program for the
    epoch when the calls divide it evenly), and host syncs happen once per call.
    ``steps_per_call=1`` runs one :func:`~jaxcnn.training.train_step` per batch (any
    dataset: :meth:`Dataset.batches`).
    ``precision``: see :func:`train_step`. On several devices (:mod:`jaxcnn.distributed`)
    every index block is sharded along the batch, also with ``steps_per_call=1``.
    """
    n = len(dataset)
    nbatch = num_batches(n, batch_size)
    first_step = int(state.step)
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=n, desc=f"epoch {epoch}", unit="img", unit_scale=True, leave=False,
               disable=not progress, file=sys.stderr)
    loss_sum, correct, count = 0.0, 0, 0

    steps_done = 0

    def consume(stacked: dict[str, jax.Array]) -> None:
        nonlocal steps_done
        host = jax.device_get(stacked)
        for k in range(len(host["loss"])):
            consume_one(steps_done, {key: v[k] for key, v in host.items()})
            steps_done += 1

    def consume_one(i: int, host: dict[str, Any]) -> None:
        nonlocal loss_sum, correct, count
        step = first_step + i + 1
        if not bool(host["finite"]):
            bar.close()
            raise _non_finite(step, epoch, i + 1, nbatch, float(host["loss"]))
        loss_sum += float(host["loss"])
        correct += int(host["correct"])
        count += int(host["count"])
        bar.update(int(host["count"]))
        if progress and i % 10 == 0:
            bar.set_postfix(loss=f"{float(host['loss']):.4f}", refresh=False)
        if on_step is not None:
            on_step(step, {"loss": float(host["loss"]), "epoch": epoch, "batch": i + 1})

    pending: dict[str, jax.Array] | None = None  # the previous call's metrics, (K,) each
    if steps_per_call is None:
        per_process = _per_process(dataset) is not None
        held = per_process or _on_device(dataset) is not None
        steps_per_call = scan_steps_per_call(n, batch_size, per_process) if held else 1
    for program, batch in _calls(dataset, batch_size, seed, epoch, steps_per_call):
        if program is train_step:
            state, metrics = train_step(state, *batch, resize=resize, precision=precision)
            metrics = jax.tree.map(lambda a: a[None], metrics)
        else:
            state, metrics = _programs.call(program, state, *batch, resize=resize,
                                            precision=precision)
        if pending is not None:
            consume(pending)
        pending = metrics
    if pending is not None:
        consume(pending)
    bar.close()
    if steps_done != nbatch or count != n:
        raise RuntimeError(f"dataset gave {steps_done} batches / {count} examples, expected "
                           f"{nbatch} / {n}")
    return state, {"loss": loss_sum / nbatch, "train_acc": correct / count, "images": count}


def _calls(dataset: Dataset, batch_size: int, seed: int, epoch: int, steps_per_call: int
           ) -> Iterator[tuple[Callable[..., Any], tuple[jax.Array, ...]]]:
    """The epoch's work as ``(program, arguments)``, in :meth:`DeviceDataset.batches` order:
    ``(images, labels)`` batches for :func:`train_step`; with ``steps_per_call > 1`` or a mesh,
    ``(images, labels, indices, weights)`` for ``train_scan`` (:func:`epoch_blocks`: the
    partial last batch padded into the last block; placed by
    :func:`jaxcnn.distributed.put_batch`, sharded along the batch), or, with several
    processes, the gathered ``(images, labels)`` blocks of
    :func:`jaxcnn.distributed.put_local_blocks` for ``train_blocks``, then the partial last
    batch as one more call."""
    host = _per_process(dataset)
    if host is None and steps_per_call == 1 and (distributed.mesh() is None
                                                 or _on_device(dataset) is None):
        for batch in dataset.batches(batch_size, shuffle=True, seed=seed, epoch=epoch - 1):
            yield train_step, batch
        return
    arrays = _on_device(dataset)
    if arrays is None and host is None:
        raise TypeError(f"steps_per_call={steps_per_call} needs the data on the device "
                        f"(jaxcnn.data.DeviceDataset), got {type(dataset).__name__}")
    n = len(dataset)
    order = epoch_order(seed, epoch - 1, n).astype(np.int32)
    if host is None:  # the partial last batch padded into the last block
        for idx, weights in epoch_blocks(order, batch_size, steps_per_call):
            yield train_scan, (*arrays, distributed.put_batch(idx),
                               distributed.put_batch(weights))
        return
    rest = order[n // batch_size * batch_size:]
    blocks = chunk_indices(order, batch_size, steps_per_call) + ([rest[None]] if len(rest) else [])
    for block in blocks:  # the partial last batch: one more call of one update
        yield train_blocks, distributed.put_local_blocks(*host, block)


def fit(state: TrainState, train_ds: Dataset, test_ds: Dataset, *, epochs: int,
        batch_size: int, resize: int | None = None, seed: int = 0,
        history: Sequence[EpochStats] = (),
        lr_of_epoch: Callable[[int], float] | None = None,
        on_epoch_end: Callable[[TrainState, list[EpochStats]], None] | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
        log: Callable[[str], None] | None = print,
        progress: bool | None = None, steps_per_call: int | None = None,
        precision: str = "float32"
        ) -> tuple[TrainState, list[EpochStats]]:
    """The book's ``train_ch5``: train epochs ``len(history) + 1 .. epochs``.

    After each epoch: test accuracy in eval mode, one :class:`EpochStats` appended to the
    history, its book line passed to ``log``, then ``on_epoch_end(state, history)`` (e.g. a
    checkpoint; the state there is finite). ``lr_of_epoch(e)`` (0-based) is recorded in the
    stats. Raises :class:`NonFiniteError` on NaN/inf before ``on_epoch_end`` of that epoch.
    ``steps_per_call``: see :func:`train_epoch`; ``precision``: see :func:`train_step` (the
    test pass uses it too).
    """
    history = list(history)
    for epoch in range(len(history) + 1, epochs + 1):
        start = time.perf_counter()
        state, train = train_epoch(state, train_ds, batch_size=batch_size, epoch=epoch,
                                   seed=seed, resize=resize, on_step=on_step, progress=progress,
                                   steps_per_call=steps_per_call, precision=precision)
        train_time = time.perf_counter() - start
        test_acc = _accuracy(state.apply_fn, state.variables, test_ds, batch_size, resize,
                             precision)
        elapsed = time.perf_counter() - start
        stats = EpochStats(
            epoch=epoch, loss=train["loss"], train_acc=train["train_acc"], test_acc=test_acc,
            time=elapsed, images_per_sec=train["images"] / train_time, step=int(state.step),
            lr=None if lr_of_epoch is None else float(lr_of_epoch(epoch - 1)),
        )
        history.append(stats)
        if log is not None:
            log(stats.line())
        if on_epoch_end is not None:
            on_epoch_end(state, history)
    return state, history
