"""Worker of the distributed tests (run as a subprocess: the device count is fixed when JAX
starts). Trains each given preset on small synthetic data with :func:`jaxcnn.training.train`
on ``--devices N`` (optionally as one of several processes) and writes, for process 0, an
``.npz`` per preset: per-epoch ``loss``/``train_acc``/``test_acc``, per-step ``step_loss``,
and every parameter and BatchNorm buffer after the run (``params/...``, ``batch_stats/...``).

``--checkpoint PRESET``: that preset's run also checkpoints every epoch into ``OUT/ckpt-PRESET``
(then ``OUT/ckpt-PRESET.done`` appears). ``--resume-from DIR``: after the presets, wait for
``DIR.done``, copy ``DIR`` without its last checkpoint and resume it on this worker's devices
(``resume-PRESET.npz``: epoch 1 trained where ``DIR`` was made, epoch 2 here). In a
multi-process run every process writes ``reads-<process id>.json``: the training and test
rows it read.

    python tests/_dist_worker.py OUT_DIR --devices N --presets lenet,lenet_bn [--coordinator
        127.0.0.1:PORT --num-processes 2 --process-id I] [--checkpoint P] [--resume-from DIR]
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
#: layers and its 96x96 input, with narrow stages, on 70 images: 2 batches of 32 and one of 6.
OVERRIDES: dict[str, tuple[dict[str, Any], int]] = {
    "resnet18": ({"model_config": {"channels": (8, 16, 32, 64)}, "batch_size": 32,
                  "epochs": 1}, 70),
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


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--devices", type=int, default=None)
    p.add_argument("--presets", default="lenet,lenet_bn,lenet_bn_scratch")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--resume-from", type=Path, default=None)
    p.add_argument("--coordinator")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    args = p.parse_args(argv)

    from jaxcnn import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id, timeout=60)
    distributed.use_devices(args.devices)
    args.out.mkdir(parents=True, exist_ok=True)
    main_process = distributed.is_main_process()
    reads = {"train": 0, "test": 0}
    if distributed.is_multi_process():  # count the rows this process reads
        put = distributed.put_local_blocks

        def counting(images: Any, labels: Any, block: Any, valid: Any = None) -> Any:
            k, b = np.shape(block)
            rows = distributed.local_rows(distributed.batch_sharding((k, b), axis=1), (k, b))
            reads["train" if valid is None else "test"] += k * (rows.stop - rows.start)
            return put(images, labels, block, valid)

        distributed.put_local_blocks = counting
    for preset in args.presets.split(","):
        workdir = args.out / f"ckpt-{preset}" if preset == args.checkpoint else None
        arrays = _run(preset, workdir)
        if main_process:
            np.savez(args.out / f"{preset}.npz", **arrays)
        if workdir is not None:
            workdir.with_name(workdir.name + ".done").touch()
    if distributed.is_multi_process():
        (args.out / f"reads-{args.process_id}.json").write_text(json.dumps(reads))
    if args.resume_from is not None:
        arrays = _resume(args.resume_from, args.out)
        np.savez(args.out / f"resume-{args.resume_from.name.removeprefix('ckpt-')}.npz",
                 **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
