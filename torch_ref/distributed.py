"""The torch reference of data-parallel training: ``DistributedDataParallel`` over CPU
processes (gloo), and one process on the global batch.

Both train a torch twin (:func:`torch_ref.create_model`) from given weights on given global
batches with the optimizer of a jaxcnn :class:`~jaxcnn.training.TrainConfig`
(:func:`torch_ref.optim.make_optimizer`, the scheduler stepped per epoch) and the book's step
(forward in train mode, mean cross-entropy, ``zero_grad``, ``backward``, ``step``):

- :func:`ddp_train`: ``world_size`` processes (``python -m torch_ref.distributed``), each
  reading only its contiguous share of every global batch (rank ``r`` of ``W`` takes rows
  ``[r B / W, (r + 1) B / W)``, as device ``r`` of jaxcnn's mesh); DDP averages the gradients
  (all-reduce), so with equal shares every step is the global-batch step. BatchNorm would
  normalise per rank (``SyncBatchNorm`` needs GPUs): use it for models without BatchNorm.
- :func:`train_global`: one process on the whole global batch (what ``SyncBatchNorm`` and
  jaxcnn's N devices compute); for BatchNorm models.

Images are uint8 ``(N, 28, 28)`` scaled by ``1 / 255`` as ``ToTensor`` (no resize), labels
``(N,)``; ``orders`` holds one epoch's example order per epoch (int ``(N,)``), cut into batches
of ``config.batch_size`` with the last one partial. Both return ``{'step_loss': float64 (S,)
(the global batch's mean loss per step), 'state_dict': {name: numpy array}}``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jaxcnn.training import TrainConfig

from . import create_model
from .optim import make_optimizer, make_scheduler, state_dict_numpy


def _model(config: TrainConfig, state_dict: dict[str, Any]) -> torch.nn.Module:
    if config.resize not in (None, 28):
        raise ValueError(f"torch_ref.distributed feeds 28x28 images, got resize {config.resize}")
    model = create_model(config.model, **dict(config.model_config))
    model.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in state_dict.items()})
    return model.train()


def _loop(model: torch.nn.Module, config: TrainConfig, images: np.ndarray, labels: np.ndarray,
          orders: Sequence[np.ndarray], rows: Callable[[np.ndarray], np.ndarray],
          global_loss: Callable[[torch.Tensor], float]) -> list[float]:
    """Train ``model`` (plain or DDP-wrapped) on ``rows(global batch indices)`` of each batch;
    ``global_loss(local mean loss)`` gives the step's global-batch loss."""
    opt = make_optimizer(config.optimizer, model.parameters())
    sched = make_scheduler(config.optimizer, opt, config.epochs)
    bs, losses = config.batch_size, []
    for order in orders:
        for start in range(0, len(order), bs):
            mine = rows(np.asarray(order[start:start + bs]))
            x = torch.from_numpy(images[mine]).float().div(255).unsqueeze(1)
            y = torch.from_numpy(labels[mine].astype(np.int64))
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(global_loss(loss.detach()))
        if sched is not None:
            sched.step()
    return losses


def train_global(config: TrainConfig, state_dict: dict[str, Any], images: np.ndarray,
                 labels: np.ndarray, orders: Sequence[np.ndarray]) -> dict[str, Any]:
    """One process, every step on its whole global batch (see the module docstring)."""
    model = _model(config, state_dict)
    losses = _loop(model, config, images, labels, orders, lambda idx: idx,
                   lambda loss: float(loss))
    return {"step_loss": np.array(losses), "state_dict": state_dict_numpy(model)}


def ddp_train(config: TrainConfig, state_dict: dict[str, Any], images: np.ndarray,
              labels: np.ndarray, orders: Sequence[np.ndarray], world_size: int = 2,
              timeout: float = 600) -> dict[str, Any]:
    """``world_size`` DDP processes on CPU (gloo, a ``file://`` rendezvous in a temporary
    directory), each on its share of every global batch (see the module docstring). Every
    batch size must divide by ``world_size``. Raises ``RuntimeError`` with the ranks' output
    when one fails."""
    bs = config.batch_size
    sizes = {min(bs, len(o) - s) for o in orders for s in range(0, len(o), bs)}
    if any(b % world_size for b in sizes):
        raise ValueError(f"batch sizes {sorted(sizes)} do not divide over {world_size} ranks")
    with tempfile.TemporaryDirectory(prefix="torch-ddp-") as tmp:
        work = Path(tmp)
        torch.save({"config": config.to_dict(), "state_dict": dict(state_dict),
                    "images": np.asarray(images, np.uint8), "labels": np.asarray(labels),
                    "orders": [np.asarray(o) for o in orders]}, work / "inputs.pt")
        root = str(Path(__file__).resolve().parent.parent)  # where torch_ref is
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
        procs = [subprocess.Popen(
            [sys.executable, "-m", "torch_ref.distributed", str(rank), str(world_size), tmp],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            for rank in range(world_size)]
        logs = []
        try:
            for p in procs:
                logs.append(p.communicate(timeout=timeout)[0])
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        if any(p.returncode for p in procs):
            raise RuntimeError("torch DDP failed:\n" + "\n".join(
                f"rank {r} (exit {p.returncode}):\n{log[-2000:]}"
                for r, (p, log) in enumerate(zip(procs, logs, strict=True))))
        return torch.load(work / "result.pt", weights_only=False)


def _rank_main(rank: int, world_size: int, work: Path) -> None:
    """One DDP rank: train, and (rank 0) write ``result.pt``."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    inputs = torch.load(work / "inputs.pt", weights_only=False)
    config = TrainConfig.from_dict(inputs["config"])
    dist.init_process_group("gloo", init_method=f"file://{work / 'rendezvous'}", rank=rank,
                            world_size=world_size)
    try:
        model = _model(config, inputs["state_dict"])
        ddp = DistributedDataParallel(model)

        def rows(idx: np.ndarray) -> np.ndarray:
            share = len(idx) // world_size
            return idx[rank * share:(rank + 1) * share]

        def global_loss(loss: torch.Tensor) -> float:
            dist.all_reduce(loss)
            return float(loss) / world_size

        losses = _loop(ddp, config, inputs["images"], inputs["labels"], inputs["orders"], rows,
                       global_loss)
        if rank == 0:
            torch.save({"step_loss": np.array(losses), "state_dict": state_dict_numpy(model)},
                       work / "result.pt")
        # Every rank done before any tears gloo down: without it a rank still in its last
        # collective could abort ("terminate called without an active exception", seen once
        # on a loaded 2-core machine).
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _rank_main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
