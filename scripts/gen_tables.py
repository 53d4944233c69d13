"""Render the README/docs tables that report measurements from the JSON files they come from.

A table sits between ``<!-- table:NAME -->`` and ``<!-- /table -->``; ``python
scripts/gen_tables.py`` rewrites every such block in README.md and docs/*.md, ``--check`` only
reports the blocks that differ (``tests/test_docs_tables.py`` runs it). Tables:

- ``compare``: the paired full-data runs of ``docs/compare/*.json`` (``kind == "paired"``, no
  ``limit_train``): final test accuracy of each side, the max parameter difference after each
  epoch and the largest per-epoch mean-loss difference.
- ``e2e``: ``docs/bench/e2e-cpu.json`` (``jaxcnn bench --e2e --json``), rendered by the bench's
  own ``torch_ref.crosscheck.e2e.format_e2e``.
- ``bench-train``, ``bench-infer``, ``bench-epoch``: the rows of ``docs/bench/cpu-*.json``
  (``jaxcnn bench --json``; 28-px file first): training and inference images/s per framework
  with jaxcnn's best row over torch eager / torch.compile, and the one-epoch times.
- ``scaling_cpu``: ``docs/bench/scaling-cpu.json`` (``python scripts/scaling_cpu.py``): lenet_bn
  on 1, 2, 4, 8 CPU virtual devices, the last epoch's line and the warm training images/s.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def _g(v: float) -> str:
    return f"{v:.2g}"


def compare_table(root: Path = ROOT) -> str:
    rows = ["| preset | jaxcnn test acc | torch test acc | max param diff, epochs 1..N "
            "| max per-epoch loss diff |", "| --- | --- | --- | --- | --- |"]
    for path in sorted((root / "docs" / "compare").glob("*.json")):
        d = json.loads(path.read_text())
        if d.get("kind") != "paired" or d["config"].get("limit_train") is not None:
            continue
        epochs = d["epochs"]
        last = epochs[-1]
        loss = max(abs(e["jaxcnn"]["loss"] - e["torch"]["loss"]) for e in epochs)
        rows.append(f"| {path.stem} | {last['jaxcnn']['test_acc']:.4f} | "
                    f"{last['torch']['test_acc']:.4f} | "
                    f"{', '.join(_g(e['param_max_abs_diff']) for e in epochs)} | {_g(loss)} |")
    return "\n".join(rows) + "\n"


def e2e_table(root: Path = ROOT) -> str:
    from torch_ref.crosscheck.e2e import format_e2e

    report = json.loads((root / "docs" / "bench" / "e2e-cpu.json").read_text())
    return format_e2e(report) + "\n"


BENCH_FILES = ("cpu-28px.json", "cpu-224px.json")
FRAMEWORKS = ("jaxcnn", "jaxcnn scan", "torch eager", "torch.compile")


def _bench_reports(root: Path) -> list[dict]:
    return [json.loads((root / "docs" / "bench" / name).read_text()) for name in BENCH_FILES
            if (root / "docs" / "bench" / name).exists()]


def _rate(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _ratio(best: float | None, other: float | None) -> str:
    return f"{best / other:.2f}" if best and other else "-"


def _bench_rows(root: Path, field: str) -> list[tuple[str, int, dict[str, float | None]]]:
    """``(model label, batch, framework -> field)`` per model, in the files' order."""
    out = []
    for report in _bench_reports(root):
        models: dict[str, tuple[int, dict[str, float | None]]] = {}
        for row in report["rows"]:
            _, values = models.setdefault(row["model"], (row["batch"], {}))
            values[row["framework"]] = None if row.get("error") else row.get(field)
        out += [(label, batch, values) for label, (batch, values) in models.items()]
    return out


def _rate_table(root: Path, field: str, batch: bool, versus: dict[str, str]) -> str:
    """Images/s of every framework per model, then jaxcnn's best row over each of ``versus``
    (column title -> torch framework; the first ratio in bold when there are two)."""
    head = ["model", *(["batch"] if batch else []), *FRAMEWORKS, *versus]
    rows = ["| " + " | ".join(head) + " |", "| --- " * len(head) + "|"]
    for label, size, v in _bench_rows(root, field):
        best = max((x for k, x in v.items() if k.startswith("jaxcnn") and x), default=None)
        ratios = [_ratio(best, v.get(fw)) for fw in versus.values()]
        if len(ratios) > 1:
            ratios[0] = f"**{ratios[0]}**"
        cells = [label, *([str(size)] if batch else []), *(_rate(v.get(f)) for f in FRAMEWORKS),
                 *ratios]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def bench_train_table(root: Path = ROOT) -> str:
    return _rate_table(root, "train_images_per_s", True,
                       {"best / eager": "torch eager", "best / compile": "torch.compile"})


def bench_infer_table(root: Path = ROOT) -> str:
    return _rate_table(root, "infer_images_per_s", False, {"best / eager": "torch eager"})


def bench_epoch_table(root: Path = ROOT) -> str:
    names = FRAMEWORKS[:3]
    rows = ["| model | " + " | ".join(f"{f}: first / second epoch" for f in names) + " |",
            "| --- " * (len(names) + 1) + "|"]
    for report in _bench_reports(root):
        epochs: dict[str, dict[str, str]] = {}
        for e in report.get("epochs", []):
            epochs.setdefault(e["model"], {})[e["framework"]] = (
                f"{e['total_s']:.1f} / {e['warm_epoch_s']:.1f}")
        rows += [f"| {m} | " + " | ".join(v.get(f, "-") for f in names) + " |"
                 for m, v in epochs.items()]
    return "\n".join(rows) + "\n"


def scaling_cpu_table(root: Path = ROOT) -> str:
    d = json.loads((root / "docs" / "bench" / "scaling-cpu.json").read_text())
    rows = [f"| devices | epoch {d['epochs']} (loss, train acc, test acc) | warm epoch time "
            f"| training images/s | load average |", "|---:|---|---:|---:|---:|"]
    for r in d["runs"]:
        e = r["epochs"][-1]
        rows.append(f"| {r['devices']} | {e['loss']:.4f}, {e['train_acc']:.3f}, "
                    f"{e['test_acc']:.3f} | {r['epoch_time_s']:.2f} s | "
                    f"{r['train_images_per_sec']:,} | {r['load_average']:.1f} |")
    return "\n".join(rows) + "\n"


TABLES = {"compare": compare_table, "e2e": e2e_table, "bench-train": bench_train_table,
          "bench-infer": bench_infer_table, "bench-epoch": bench_epoch_table,
          "scaling_cpu": scaling_cpu_table}
FILES = ("README.md", "docs/compare.md", "docs/bench.md", "docs/scaling.md")


def render(text: str, root: Path = ROOT) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}")
        return m.group(1) + TABLES[name](root) + m.group(4)

    return BLOCK.sub(sub, text)


def stale(root: Path = ROOT) -> list[str]:
    """The files whose tables differ from what the JSON renders."""
    out = []
    for name in FILES:
        path = root / name
        if path.exists() and render(path.read_text(), root) != path.read_text():
            out.append(name)
    return out


def main(argv: list[str]) -> int:
    if "--check" in argv:
        bad = stale()
        for name in bad:
            print(f"{name}: a table differs from docs JSON; run python scripts/gen_tables.py")
        return 1 if bad else 0
    for name in FILES:
        path = ROOT / name
        if path.exists():
            path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
