"""Worker of the distributed tests (run as a subprocess: the device count is fixed when JAX
starts). Trains presets on small synthetic data with :func:`jaxcnn.training.train`, stage by
stage (``--stage NAME:PRESETS``: on ``NAME`` devices when it is a number, else on all, e.g.
as one of several processes), and writes, for process 0, ``OUT/NAME/PRESET.npz``: per-epoch
``loss``/``train_acc``/``test_acc``, per-step ``step_loss``, and every parameter and BatchNorm
buffer after the run (``params/...``, ``batch_stats/...``). Stages of one process share their
compiled programs where they can (the init, and everything of equal device counts).

``--checkpoint NAME:PRESET``: that run also checkpoints every epoch into
``OUT/NAME/ckpt-PRESET`` (then ``ckpt-PRESET.done`` appears next to it). ``--resume-from DIR
--resume-on 1,2``: after the stages, wait for ``DIR.done``, then for each device count copy
``DIR`` without its last checkpoint and resume it there (``OUT/<count>/resume-PRESET.npz``:
epoch 1 trained where ``DIR`` was made, epoch 2 here). In a multi-process run every process
writes ``OUT/NAME/reads-<process id>.json``: the training and test rows it read.

    python tests/_dist_worker.py OUT --stage 1:lenet,lenet_bn --stage 4:lenet_bn [--coordinator
        127.0.0.1:PORT --num-processes 2 --process-id I] [--checkpoint 4:lenet_bn]
        [--resume-from DIR --resume-on 1,2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: 5 full batches of 64 and a partial one of 6 (not divisible by 4 or 8: run replicated).
N_TRAIN, N_TEST, BATCH, EPOCHS = 326, 100, 64, 2
#: preset -> (config overrides, training images). ResNet-18 (a 96-px model) keeps its 18
#: layers and its 96x96 input, with narrow stages, on 96 images: 3 steps of 32.
OVERRIDES: dict[str, tuple[dict[str, Any], int]] = {
    "resnet18": ({"model_config": {"channels": (8, 16, 32, 64)}, "batch_size": 32,
                  "epochs": 1}, 96),
}


def synthetic(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(n, 28, 28)`` images with a class-dependent bright square, int labels ``(n,)``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 80, (n, 28, 28)).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 2 * y:2 * y + 8, 4:12] = 220
    return images, labels


def config_of(preset: str) -> Any:
    """The :class:`TrainConfig` the worker trains ``preset`` with."""
    from jaxcnn.training import resolve_config

    overrides, _ = OVERRIDES.get(preset, ({}, N_TRAIN))
    return resolve_config(preset, **{"epochs": EPOCHS, "batch_size": BATCH, **overrides})


def train_size(preset: str) -> int:
    return OVERRIDES.get(preset, ({}, N_TRAIN))[1]


def flat(tree: object, prefix: str) -> dict[str, np.ndarray]:
    import jax

    return {prefix + "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


def _run(preset: str, workdir: Path | None = None, resume: bool = False) -> dict[str, Any]:
    from jaxcnn import distributed
    from jaxcnn.data import DeviceDataset
    from jaxcnn.training import train

    n = train_size(preset)
    datasets = (DeviceDataset.from_arrays(*synthetic(0, n)),
                DeviceDataset.from_arrays(*synthetic(1, N_TEST)))
    losses: list[float] = []
    result = train(config_of(preset), workdir, resume=resume, datasets=datasets, log=None,
                   progress=False, on_step=lambda step, m: losses.append(m["loss"]))
    h = result.history
    return {"loss": np.array([e.loss for e in h]),
            "train_acc": np.array([e.train_acc for e in h]),
            "test_acc": np.array([e.test_acc for e in h]),
            "step_loss": np.array(losses), "step": np.array(int(result.state.step)),
            "devices": np.array(distributed.device_count()),
            **flat(result.state.params, "params/"),
            **flat(result.state.batch_stats, "batch_stats/")}


def _resume(source: Path, out: Path, wait_s: float = 600) -> dict[str, Any]:
    done = source.with_name(source.name + ".done")
    deadline = time.monotonic() + wait_s
    while not done.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} did not appear within {wait_s} s")
        time.sleep(0.2)
    preset = source.name.removeprefix("ckpt-")
    target = out / f"resumed-{preset}"
    shutil.copytree(source, target)
    last = max(int(p.name) for p in (target / "checkpoints").iterdir() if p.name.isdigit())
    shutil.rmtree(target / "checkpoints" / str(last))  # as if killed during the last epoch
    return _run(preset, target, resume=True)


def _counting_reads(reads: dict[str, int]) -> None:
    """Count the rows this process reads (train/test) in ``reads``."""
    from jaxcnn import distributed

    put = distributed.put_local_blocks

    def counting(images: Any, labels: Any, block: Any, valid: Any = None) -> Any:
        k, b = np.shape(block)
        rows = distributed.local_rows(distributed.batch_sharding((k, b), axis=1), (k, b))
        reads["train" if valid is None else "test"] += k * (rows.stop - rows.start)
        return put(images, labels, block, valid)

    distributed.put_local_blocks = counting


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--stage", action="append", default=[])
    p.add_argument("--checkpoint", default="")
    p.add_argument("--resume-from", type=Path, default=None)
    p.add_argument("--resume-on", default="")
    p.add_argument("--coordinator")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    args = p.parse_args(argv)

    from jaxcnn import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id, timeout=60)
    main_process = distributed.is_main_process()
    for stage in args.stage:
        name, presets = stage.split(":")
        distributed.use_devices(int(name) if name.isdigit() else None)
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        reads = {"train": 0, "test": 0}
        if distributed.is_multi_process():
            _counting_reads(reads)
        for preset in presets.split(","):
            workdir = out / f"ckpt-{preset}" if f"{name}:{preset}" == args.checkpoint else None
            wall, cpu = time.perf_counter(), time.process_time()
            arrays = _run(preset, workdir)
            print(f"{name}: {preset} {time.perf_counter() - wall:.1f} s, "
                  f"{time.process_time() - cpu:.1f} s CPU", flush=True)
            if main_process:
                np.savez(out / f"{preset}.npz", **arrays)
            if workdir is not None:
                workdir.with_name(workdir.name + ".done").touch()
        if distributed.is_multi_process():
            (out / f"reads-{args.process_id}.json").write_text(json.dumps(reads))
    for n in filter(None, args.resume_on.split(",")):
        distributed.use_devices(int(n))
        out = args.out / n
        out.mkdir(parents=True, exist_ok=True)
        arrays = _resume(args.resume_from, out)
        np.savez(out / f"resume-{args.resume_from.name.removeprefix('ckpt-')}.npz", **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
