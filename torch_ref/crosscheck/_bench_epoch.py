"""One epoch of the book's loop in both frameworks, data preparation included (used by
:mod:`torch_ref.crosscheck.bench`)."""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np
import torch

from jaxcnn.data import DeviceDataset, epoch_order, load_splits, num_batches
from jaxcnn.training import PRESETS, fit, init_state

from .. import create_model
from ..optim import make_optimizer


@dataclasses.dataclass
class EpochRow:
    """The first epoch of the book's loop: ``data_s`` (tensors / device arrays from the uint8
    arrays), ``train_s``, ``test_s``, ``total_s`` (all three), the epoch's accuracies; and
    ``warm_epoch_s``, the second epoch's training plus test time (everything compiled)."""

    model: str
    framework: str
    batch: int
    images: int
    data_s: float
    train_s: float
    test_s: float
    total_s: float
    train_acc: float
    test_acc: float
    warm_epoch_s: float
    note: str = ""


def bench_epoch(name: str, preset: str, *, data_dir: str | os.PathLike[str] | None = None,
                limit_train: int | None = None, limit_test: int | None = None,
                seed: int = 0) -> list[EpochRow]:
    """Two epochs of the book's loop in jaxcnn (one step per call, then the whole epoch in one
    call: its batches, the partial last one padded), then in torch eager (same batch order);
    a row per framework with the first epoch's times and accuracies and the second epoch's
    time."""
    config = PRESETS[preset][0]
    if config.resize is not None:
        raise ValueError(f"the epoch benchmark is for the 28x28 models, not {name}")
    fm = load_splits(data_dir, limit_train=limit_train, limit_test=limit_test)
    tr_x, tr_y, te_x, te_y = fm.train_images, fm.train_labels, fm.test_images, fm.test_labels
    batch = config.batch_size
    rows = []

    start = time.perf_counter()
    train_ds, test_ds = DeviceDataset.splits(fm)
    jax.block_until_ready((train_ds.images, test_ds.images))
    data_s = time.perf_counter() - start
    nbatch = num_batches(len(train_ds), batch)
    for framework, steps_per_call in (("jaxcnn", 1), ("jaxcnn scan", nbatch)):
        _, state = init_state(config, nbatch)
        _, (h, h2) = fit(state, train_ds, test_ds, epochs=2, batch_size=batch, resize=None,
                         seed=seed, log=None, progress=False, steps_per_call=steps_per_call)
        train_s = len(train_ds) / h.images_per_sec
        note = "compilation included"
        if steps_per_call > 1:
            note += f"; the epoch's {nbatch} batches in one call (the partial one padded)"
        rows.append(EpochRow(name, framework, batch, len(train_ds), data_s, train_s,
                             h.time - train_s, data_s + h.time, h.train_acc, h.test_acc,
                             h2.time, note))

    start = time.perf_counter()
    xs = [torch.from_numpy(np.array(a)).float().div_(255).unsqueeze_(1)
          for a in (tr_x, te_x)]  # ToTensor: float32 v / 255, (N, 1, 28, 28)
    ys = [torch.from_numpy(a.astype(np.int64)) for a in (tr_y, te_y)]
    data_s = time.perf_counter() - start
    torch.manual_seed(seed)
    model = create_model(config.model, **config.model_config).train()
    opt = make_optimizer(config.optimizer, model.parameters())
    epochs = [_torch_epoch(model, opt, xs, ys, batch, epoch_order(seed, e, len(tr_x)))
              for e in range(2)]
    train_s, test_s, train_acc, test_acc = epochs[0]
    rows.append(EpochRow(name, "torch eager", batch, len(tr_x), data_s, train_s, test_s,
                         data_s + train_s + test_s, train_acc, test_acc,
                         epochs[1][0] + epochs[1][1]))
    return rows


def _torch_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, xs: list[torch.Tensor],
                 ys: list[torch.Tensor], batch: int, order: np.ndarray
                 ) -> tuple[float, float, float, float]:
    """The book's ``train_ch5`` epoch: ``(train s, test s, train acc, test acc)``."""
    start = time.perf_counter()
    idx_all = torch.from_numpy(order)
    correct = 0
    for i in range(0, len(idx_all), batch):
        idx = idx_all[i:i + batch]
        x, y = xs[0].index_select(0, idx), ys[0].index_select(0, idx)
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        correct += int((out.argmax(dim=1) == y).sum().item())
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    model.eval()
    test_correct = 0
    with torch.no_grad():
        for i in range(0, len(xs[1]), batch):
            out = model(xs[1][i:i + batch])
            test_correct += int((out.argmax(dim=1) == ys[1][i:i + batch]).sum().item())
    model.train()
    test_s = time.perf_counter() - start
    return train_s, test_s, correct / len(idx_all), test_correct / len(xs[1])
