"""Render the README/docs tables that report measurements from the JSON files they come from.

A table sits between ``<!-- table:NAME -->`` and ``<!-- /table -->``; ``python
scripts/gen_tables.py`` rewrites every such block in README.md and docs/*.md, ``--check`` only
reports the blocks that differ (``tests/test_docs_tables.py`` runs it). Tables:

- ``compare``: the paired full-data runs of ``docs/compare/*.json`` (``kind == "paired"``, no
  ``limit_train``): final test accuracy of each side, the max parameter difference after each
  epoch and the largest per-epoch mean-loss difference.
- ``e2e``: ``docs/bench/e2e-cpu.json`` (``jaxcnn bench --e2e --json``), rendered by the bench's
  own ``torch_ref.crosscheck.e2e.format_e2e``.
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


TABLES = {"compare": compare_table, "e2e": e2e_table}
FILES = ("README.md", "docs/compare.md", "docs/bench.md")


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
