"""Whole processes, back to back: ``jaxcnn train --preset P`` against the book's PyTorch loop
``python -m torch_ref.train --preset P`` (``jaxcnn bench --e2e``).

Each run is a fresh Python process timed from its start to its exit (interpreter start-up,
imports, data loading, compilation, every epoch and the test passes), as a user sees it.
jaxcnn runs twice per repeat: with an empty XLA program cache (``cold``: a newcomer's first
run) and again with the cache the first run filled (``warm``: every later run). The ratio is
torch's wall time over jaxcnn's: above 1, jaxcnn is faster.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

_EPOCH = re.compile(r"^epoch (\d+), loss ([\d.]+), train acc ([\d.]+), test acc ([\d.]+), "
                    r"time ([\d.]+) sec", re.MULTILINE)


def parse_epochs(output: str) -> list[dict[str, float]]:
    """The book's epoch lines of a run's output as dicts (epoch, loss, train/test acc, time)."""
    return [{"epoch": int(m[1]), "loss": float(m[2]), "train_acc": float(m[3]),
             "test_acc": float(m[4]), "time": float(m[5])} for m in _EPOCH.finditer(output)]


def _run(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    epochs = parse_epochs(proc.stdout)
    return {"wall_s": wall, "epochs": epochs,
            "first_epoch_s": epochs[0]["time"] if epochs else None,
            "warm_epoch_s": statistics.median(e["time"] for e in epochs[1:])
            if len(epochs) > 1 else None}


def commands(preset: str, *, loader: str = "memory", extra: Sequence[str] = ()
             ) -> dict[str, list[str]]:
    """The two command lines (``jaxcnn``, ``torch``) of one comparison."""
    return {"jaxcnn": [sys.executable, "-m", "jaxcnn", "train", "--preset", preset, *extra],
            "torch": [sys.executable, "-m", "torch_ref.train", "--preset", preset,
                      "--loader", loader, *extra]}


def run_e2e(presets: Sequence[str], *, repeats: int = 1, loader: str = "memory",
            extra: Sequence[str] = (), log: Callable[[str], None] | None = None
            ) -> dict[str, Any]:
    """For each preset, ``repeats`` rounds of: jaxcnn with an empty program cache, jaxcnn
    with that cache, torch. Returns the runs and, per preset, the medians and the ratios
    ``torch wall / jaxcnn wall`` (cold and warm)."""
    base_env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    results: dict[str, Any] = {}
    for preset in presets:
        cmds = commands(preset, loader=loader, extra=extra)
        runs: dict[str, list[dict[str, Any]]] = {"jaxcnn cold": [], "jaxcnn warm": [],
                                                  "torch": []}
        for r in range(repeats):
            with tempfile.TemporaryDirectory(prefix="jaxcnn-e2e-cache-") as cache:
                env = {**base_env, "JAX_COMPILATION_CACHE_DIR": cache}
                for label in ("jaxcnn cold", "jaxcnn warm"):
                    if log:
                        log(f"{preset} {r + 1}/{repeats}: {label}")
                    runs[label].append(_run(cmds["jaxcnn"], env))
            if log:
                log(f"{preset} {r + 1}/{repeats}: torch ({loader} loader)")
            runs["torch"].append(_run(cmds["torch"], base_env))
        med = {label: {k: statistics.median(x[k] for x in rs if x[k] is not None)
                       if any(x[k] is not None for x in rs) else None
                       for k in ("wall_s", "first_epoch_s", "warm_epoch_s")}
               for label, rs in runs.items()}
        results[preset] = {
            "commands": {k: " ".join(v[1:]) for k, v in cmds.items()},
            "runs": runs, "median": med,
            "ratio_cold": med["torch"]["wall_s"] / med["jaxcnn cold"]["wall_s"],
            "ratio_warm": med["torch"]["wall_s"] / med["jaxcnn warm"]["wall_s"],
        }
    return {"presets": results, "loader": loader, "repeats": repeats, "extra": list(extra)}


def format_e2e(report: dict[str, Any]) -> str:
    """A markdown table: per preset and run, the median wall, first and warm epoch times, and
    torch / jaxcnn."""
    lines = [f"whole process, median of {report['repeats']} (torch loader: "
             f"{report['loader']}; extra flags: {' '.join(report['extra']) or 'none'})", "",
             "| preset | run | wall s | first epoch s | warm epoch s | torch / jaxcnn |",
             "| --- | --- | --- | --- | --- | --- |"]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for preset, res in report["presets"].items():
        for label, med in res["median"].items():
            ratio = {"jaxcnn cold": res["ratio_cold"], "jaxcnn warm": res["ratio_warm"]}
            r = f"{ratio[label]:.2f}x" if label in ratio else "-"
            lines.append(f"| {preset} | {label} | {f(med['wall_s'])} | "
                         f"{f(med['first_epoch_s'])} | {f(med['warm_epoch_s'])} | {r} |")
    return "\n".join(lines)
