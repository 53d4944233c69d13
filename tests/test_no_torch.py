"""jaxcnn is JAX only: importing it (and every submodule) never imports torch."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import jaxcnn


def test_importing_every_jaxcnn_module_leaves_torch_unimported() -> None:
    names = [m.name for m in pkgutil.walk_packages(jaxcnn.__path__, "jaxcnn.")
             if m.name != "jaxcnn.__main__"]
    assert "jaxcnn.convert" in names and "jaxcnn.layers" in names
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module(n)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad[:5]\n"
        "print('ok', len(sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


def test_no_module_level_torch_import_in_the_jaxcnn_sources() -> None:
    root = Path(jaxcnn.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith(("import torch", "from torch")):
                offenders.append(f"{path.relative_to(root)}:{i}")
    assert not offenders, offenders
