"""Worker of ``tests/test_distributed.py`` (run as a subprocess: the device count is fixed when
JAX starts). Trains each given preset on small synthetic data with :func:`jaxcnn.training.train`
on ``--devices N`` (optionally as one of several processes) and writes, for process 0, an
``.npz`` per preset: per-epoch ``loss``/``train_acc``/``test_acc`` and every parameter and
BatchNorm buffer after the run (``params/...``, ``batch_stats/...``).

    python tests/_dist_worker.py OUT_DIR --devices N --presets lenet,lenet_bn [--coordinator
        127.0.0.1:PORT --num-processes 2 --process-id I]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

#: 5 full batches of 64 and a partial one of 6 (not divisible by 4 or 8: run replicated).
N_TRAIN, N_TEST, BATCH, EPOCHS = 326, 100, 64, 2
#: preset -> config overrides (the 96-px model on small inputs: resnet18 at 32x32).
OVERRIDES = {"resnet18": {"resize": 32}}


def synthetic(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(n, 28, 28)`` images with a class-dependent bright square, int labels ``(n,)``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 80, (n, 28, 28)).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 2 * y:2 * y + 8, 4:12] = 220
    return images, labels


def flat(tree: object, prefix: str) -> dict[str, np.ndarray]:
    import jax

    return {prefix + "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--devices", type=int, default=None)
    p.add_argument("--presets", default="lenet,lenet_bn,lenet_bn_scratch")
    p.add_argument("--steps-per-call", type=int, default=None)
    p.add_argument("--coordinator")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    args = p.parse_args(argv)


    from jaxcnn import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id, timeout=60)
    distributed.use_devices(args.devices)

    from jaxcnn.data import DeviceDataset
    from jaxcnn.training import resolve_config, train

    train_ds = DeviceDataset.from_arrays(*synthetic(0, N_TRAIN))
    test_ds = DeviceDataset.from_arrays(*synthetic(1, N_TEST))
    args.out.mkdir(parents=True, exist_ok=True)
    for preset in args.presets.split(","):
        config = resolve_config(preset, epochs=EPOCHS, batch_size=BATCH,
                                **OVERRIDES.get(preset, {}))
        result = train(config, None, datasets=(train_ds, test_ds), log=None, progress=False,
                       steps_per_call=args.steps_per_call)
        h = result.history
        arrays = {"loss": np.array([e.loss for e in h]),
                  "train_acc": np.array([e.train_acc for e in h]),
                  "test_acc": np.array([e.test_acc for e in h]),
                  "devices": np.array(distributed.device_count()),
                  **flat(result.state.params, "params/"),
                  **flat(result.state.batch_stats, "batch_stats/")}
        if distributed.is_main_process():
            np.savez(args.out / f"{preset}.npz", **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
