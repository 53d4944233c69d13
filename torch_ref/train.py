"""The book's training loop in PyTorch, as a whole process: ``python -m torch_ref.train``.

``python -m torch_ref.train --preset lenet [--loader book|memory] [--epochs E] [--limit-train N]
[--limit-test N] [--seed S] [--data-dir DIR] [--json FILE]`` trains the torch_ref model of a
jaxcnn preset (same :class:`~jaxcnn.training.TrainConfig`, resolved by
:func:`jaxcnn.training.resolve_config`) and prints the book's epoch lines:

- ``--loader book`` (default): the book's input pipeline, a torchvision ``FashionMNIST``-style
  dataset of PIL images with ``Resize`` (when the chapter resizes) and ``ToTensor``, read by a
  ``DataLoader`` (shuffled train, in-order test, the book's 4 workers on Linux);
- ``--loader memory``: what a speed-minded PyTorch user writes: the whole set as one float
  tensor in [0, 1] (``data.float() / 255``, resized once up front for the 224/96-pixel
  presets, with torch's antialiased bilinear ``interpolate``: close to PIL's, not bit-equal),
  batches by shuffled index.

Both run the same per-batch work as the book's ``train_ch5`` (:func:`torch_ref.optim.train_epoch`:
forward, mean cross-entropy, ``zero_grad``, ``backward``, ``step``, loss/accuracy read each
batch) and its eval-mode ``evaluate_accuracy``. ``jaxcnn bench --e2e`` times this process
against ``jaxcnn train`` of the same preset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from jaxcnn.data import load_splits
from jaxcnn.training import PRESETS, TrainConfig, resolve_config

from .models import create_model
from .optim import evaluate_accuracy, make_optimizer, make_scheduler, train_epoch

LOADERS = ("book", "memory")


class _BookDataset(torch.utils.data.Dataset):
    """torchvision's ``FashionMNIST`` item path over uint8 arrays: a PIL image, then the
    book's transforms (``Resize`` if the chapter resizes, ``ToTensor``)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, resize: int | None) -> None:
        import torchvision.transforms as T

        steps = ([T.Resize(resize)] if resize else []) + [T.ToTensor()]
        self.images, self.labels, self.transform = images, labels, T.Compose(steps)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i], mode="L")
        return self.transform(img), int(self.labels[i])


def _book_batches(images: np.ndarray, labels: np.ndarray, resize: int | None, batch: int,
                  shuffle: bool) -> torch.utils.data.DataLoader:
    workers = 0 if sys.platform.startswith("win") else 4  # the book's d2l.load_data_fashion_mnist
    return torch.utils.data.DataLoader(_BookDataset(images, labels, resize), batch_size=batch,
                                       shuffle=shuffle, num_workers=workers)


def _memory_tensor(images: np.ndarray, resize: int | None) -> torch.Tensor:
    x = torch.from_numpy(images).float().div_(255).unsqueeze(1)  # (N, 1, 28, 28)
    if resize:
        x = torch.cat([torch.nn.functional.interpolate(c, size=(resize, resize),
                                                       mode="bilinear", antialias=True)
                       for c in x.split(1024)])
    return x


def _memory_batches(x: torch.Tensor, y: torch.Tensor, batch: int, shuffle: bool,
                    generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(y), generator=generator) if shuffle else None
    for start in range(0, len(y), batch):
        if order is None:
            yield x[start:start + batch], y[start:start + batch]
        else:
            idx = order[start:start + batch]
            yield x[idx], y[idx]


def run(config: TrainConfig, *, loader: str = "book", data_dir: str | None = None,
        log: bool = True) -> dict[str, object]:
    """Train ``config`` with torch as the book does; returns the epochs and timings
    (``startup_s`` from process start to the first batch, per-epoch ``time`` as the book's)."""
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {', '.join(LOADERS)}, got {loader!r}")
    torch.manual_seed(config.seed)
    data = load_splits(data_dir, limit_train=config.limit_train, limit_test=config.limit_test)
    model = create_model(config.model, **dict(config.model_config))
    optimizer = make_optimizer(config.optimizer, model.parameters())
    scheduler = make_scheduler(config.optimizer, optimizer, config.epochs)
    bs = config.batch_size
    if loader == "memory":
        xtr, xte = (_memory_tensor(a, config.resize) for a in (data.train_images,
                                                               data.test_images))
        ytr = torch.from_numpy(data.train_labels.astype(np.int64))
        yte = torch.from_numpy(data.test_labels.astype(np.int64))
        gen = torch.Generator().manual_seed(config.seed)

        def train_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return _memory_batches(xtr, ytr, bs, True, gen)

        def test_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return _memory_batches(xte, yte, bs, False, gen)
    else:
        train_loader = _book_batches(data.train_images, data.train_labels, config.resize, bs,
                                     True)
        test_loader = _book_batches(data.test_images, data.test_labels, config.resize, bs,
                                    False)

        def train_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return iter(train_loader)

        def test_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return iter(test_loader)

    epochs = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        stats = train_epoch(model, train_batches(), optimizer)
        test_acc = evaluate_accuracy(model, test_batches())
        elapsed = time.perf_counter() - start
        if scheduler is not None:
            scheduler.step()
        epochs.append({"epoch": epoch, "loss": stats.loss, "train_acc": stats.train_acc,
                       "test_acc": test_acc, "time": elapsed,
                       "images_per_sec": stats.images / stats.train_time})
        if log:
            print(f"epoch {epoch}, loss {stats.loss:.4f}, train acc {stats.train_acc:.3f}, "
                  f"test acc {test_acc:.3f}, time {elapsed:.1f} sec", flush=True)
    return {"config": config.to_dict(), "loader": loader, "epochs": epochs,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def main(argv: Sequence[str] | None = None) -> int:
    start = time.perf_counter()
    p = argparse.ArgumentParser(prog="python -m torch_ref.train",
                                description="The book's PyTorch training loop for a jaxcnn "
                                            "preset (the baseline of jaxcnn bench --e2e).")
    p.add_argument("--preset", required=True, choices=list(PRESETS))
    p.add_argument("--loader", choices=LOADERS, default="book",
                   help="book: DataLoader over PIL images as the book; memory: in-memory "
                        "tensors (default: book)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--limit-train", type=int, metavar="N")
    p.add_argument("--limit-test", type=int, metavar="N")
    p.add_argument("--seed", type=int)
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--json", metavar="FILE", help="write the epochs and timings as JSON")
    args = p.parse_args(argv)
    try:
        config = resolve_config(args.preset, epochs=args.epochs, seed=args.seed,
                                limit_train=args.limit_train, limit_test=args.limit_test)
    except (KeyError, ValueError, TypeError) as e:
        p.error(str(e))
    print(f"torch training {config.model} ({config.input_size}x{config.input_size}), batch "
          f"{config.batch_size}, {config.optimizer.name} lr {config.optimizer.lr:g}, "
          f"{config.epochs} epochs, loader {args.loader}", flush=True)
    record = run(config, loader=args.loader, data_dir=args.data_dir)
    total = time.perf_counter() - start
    last = record["epochs"][-1]
    print(f"done: {len(record['epochs'])} epochs, test acc {last['test_acc']:.3f}, "
          f"{total:.1f} sec in all", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({**record, "total_s": total}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
