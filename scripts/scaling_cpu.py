"""Measure data-parallel throughput on CPU virtual devices: docs/bench/scaling-cpu.json.

For each device count N, one ``JAX_NUM_CPU_DEVICES=N jaxcnn train --preset lenet_bn
--devices N`` run (default: 4096 training and 1000 test images, 3 epochs), one after the
other; from its ``metrics.jsonl`` the epochs after the first (warm: no compilation) give the
training images/s (median) and the epoch lines. The machine (CPU, cores, load average) is
recorded with them. ``python scripts/gen_tables.py`` renders the table of docs/scaling.md.

    python scripts/scaling_cpu.py [--devices 1,2,4,8] [--out docs/bench/scaling-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from torch_ref.crosscheck.compare import cpu_name

ROOT = Path(__file__).resolve().parent.parent


def measure(devices: int, limit_train: int, limit_test: int, epochs: int) -> dict:
    """One run on ``devices`` virtual devices: its warm epochs and median training images/s."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu")
        cmd = [sys.executable, "-m", "jaxcnn", "train", "--preset", "lenet_bn", "--devices",
               str(devices), "--limit-train", str(limit_train), "--limit-test",
               str(limit_test), "--epochs", str(epochs), "--workdir", tmp]
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        epochs_ = [json.loads(ln) for ln in (Path(tmp) / "metrics.jsonl").read_text().split("\n")
                   if ln.strip()]
    warm = epochs_[1:]
    return {"devices": devices, "wall_s": round(wall, 1),
            "train_images_per_sec": round(statistics.median(e["images_per_sec"] for e in warm)),
            "epoch_time_s": round(statistics.median(e["time"] for e in warm), 2),
            "epochs": [{k: e[k] for k in ("epoch", "loss", "train_acc", "test_acc", "time",
                                          "images_per_sec")} for e in epochs_],
            "load_average": os.getloadavg()[0]}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--limit-train", type=int, default=4096)
    p.add_argument("--limit-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "scaling-cpu.json")
    args = p.parse_args(argv)
    runs = []
    for n in (int(d) for d in args.devices.split(",")):
        runs.append(measure(n, args.limit_train, args.limit_test, args.epochs))
        print(json.dumps(runs[-1]), flush=True)
    report = {"preset": "lenet_bn", "limit_train": args.limit_train,
              "limit_test": args.limit_test, "epochs": args.epochs,
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python":
                          platform.python_version()}, "runs": runs}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
