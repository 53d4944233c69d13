"""README/docs tables of measurements are what ``scripts/gen_tables.py`` renders from the JSON."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gen_tables", ROOT / "scripts" / "gen_tables.py")
gen_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen_tables)


def test_docs_tables_match_the_json() -> None:
    assert "<!-- table:compare -->" in (ROOT / "README.md").read_text()
    assert gen_tables.stale() == []


def test_a_changed_json_number_makes_the_table_stale(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    assert gen_tables.stale(tmp_path) == []
    path = tmp_path / "docs" / "compare" / "lenet_bn.json"
    d = json.loads(path.read_text())
    d["epochs"][-1]["jaxcnn"]["test_acc"] = 0.8493  # README's old, stale number
    path.write_text(json.dumps(d))
    assert "README.md" in gen_tables.stale(tmp_path)
