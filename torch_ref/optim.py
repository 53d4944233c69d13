"""The torch side of the book's training loop, configured from jaxcnn's :class:`OptimizerConfig`.

- :func:`make_optimizer` / :func:`make_scheduler`: ``torch.optim.SGD`` / ``Adam`` / ``AdamW``
  and ``StepLR`` / ``CosineAnnealingLR`` (stepped once per epoch) with exactly the settings that
  ``jaxcnn.training.make_optimizer`` gives optax.
- :func:`train_epoch` / :func:`evaluate_accuracy`: the book's ``train_ch5`` inner loop (forward,
  mean cross-entropy, ``zero_grad``, ``backward``, ``step``; train accuracy on the training
  batches as they are trained) and its ``evaluate_accuracy`` (eval mode), with optional fixed
  dropout masks per step (:func:`torch_ref.fixed_dropout_masks`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from jaxcnn.training import OptimizerConfig

#: ``masks(i)`` -> the dropout masks of step ``i`` of the epoch (torch module name -> bool NCHW
#: or (N, F) array), or ``None`` for torch's own dropout.
MaskFn = Callable[[int], Mapping[str, Any]]


def make_optimizer(cfg: OptimizerConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer of ``cfg`` (torch's defaults for what ``cfg`` leaves out)."""
    wd = cfg.effective_weight_decay
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=wd)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=wd)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                 weight_decay=wd)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def make_scheduler(cfg: OptimizerConfig, optimizer: torch.optim.Optimizer,
                   epochs: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``StepLR(step_size, gamma)`` or ``CosineAnnealingLR(T_max=epochs, eta_min)``; ``None``
    for ``'constant'``. Call its ``step()`` once at the end of every epoch, as the book would."""
    if cfg.schedule == "constant":
        return None
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size,
                                               gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs,
                                                          eta_min=cfg.eta_min)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


@dataclasses.dataclass(frozen=True)
class TorchEpoch:
    """One torch training epoch: ``loss`` (mean of the batch losses), ``train_acc``,
    ``images``; ``train_time`` (s, data loading included, mask preparation excluded) and
    ``data_time`` (s spent fetching batches, part of ``train_time``)."""

    loss: float
    train_acc: float
    images: int
    train_time: float
    data_time: float


def _masked(model: nn.Module, masks: MaskFn | None, i: int) -> Any:
    from . import fixed_dropout_masks

    return contextlib.nullcontext() if masks is None else fixed_dropout_masks(model, masks(i))


def train_epoch(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                optimizer: torch.optim.Optimizer, *, masks: MaskFn | None = None,
                step_hook: Callable[[int, float], None] | None = None) -> TorchEpoch:
    """The book's epoch: per batch (``x`` float NCHW ``(B, 1, S, S)``, ``y`` int64 ``(B,)``)
    forward in train mode, ``cross_entropy`` (mean), ``zero_grad``, ``backward``, ``step``.

    ``masks(i)`` gives step ``i``'s dropout masks (the time to compute them is not counted);
    ``step_hook(i, loss)`` runs after each step (outside the timing).
    """
    model.train()
    loss_sum, correct, count, nbatch = 0.0, 0, 0, 0
    excluded, data_time = 0.0, 0.0
    start = time.perf_counter()
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        data_time += t1 - t0
        with _masked(model, masks, nbatch):
            t2 = time.perf_counter()
            excluded += t2 - t1  # the masks' preparation (a jaxcnn computation)
            out = model(x)
        loss = nn.functional.cross_entropy(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += loss.item()
        correct += int((out.argmax(dim=1) == y).sum())
        count += int(y.shape[0])
        if step_hook is not None:
            t3 = time.perf_counter()
            step_hook(nbatch, float(loss.item()))
            excluded += time.perf_counter() - t3
        nbatch += 1
    if nbatch == 0:
        raise ValueError("train_epoch: no batches")
    total = time.perf_counter() - start - excluded
    return TorchEpoch(loss_sum / nbatch, correct / count, count, total, data_time)


def evaluate_accuracy(model: nn.Module,
                      batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Fraction of correct ``argmax`` predictions in eval mode (the model is left in train
    mode afterwards, as the book's ``evaluate_accuracy``)."""
    correct, count = 0, 0
    model.eval()
    try:
        with torch.no_grad():
            for x, y in batches:
                correct += int((model(x).argmax(dim=1) == y).sum())
                count += int(y.shape[0])
    finally:
        model.train()
    return correct / count


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state dict as numpy arrays (copies)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
