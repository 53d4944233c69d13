"""jaxcnn is JAX only: it never imports torch or torch_ref (not even inside a function);
without torch, ``jaxcnn --help`` works and the torch commands say how to get the extra."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import jaxcnn
from jaxcnn.cli.options import TORCH_MISSING

FORBIDDEN = ("torch", "torch_ref", "torchvision")
BLOCK = "import sys\nfor m in ('torch', 'torch_ref', 'torchvision'):\n    sys.modules[m] = None\n"


def _forbidden(name: str | None) -> bool:
    return name is not None and name.split(".")[0] in FORBIDDEN


def test_no_jaxcnn_source_imports_torch_or_torch_ref() -> None:
    root = Path(jaxcnn.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [] if node.level else [node.module]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                    node.func, "id", None)) in ("import_module", "__import__") and node.args
                    and isinstance(node.args[0], ast.Constant)):
                names = [node.args[0].value]
            else:
                continue
            offenders += [f"{path.relative_to(root)}:{node.lineno} {n}" for n in names
                          if _forbidden(n)]
    assert not offenders, offenders


def test_importing_every_jaxcnn_module_with_torch_blocked() -> None:
    names = [m.name for m in pkgutil.walk_packages(jaxcnn.__path__, "jaxcnn.")
             if m.name != "jaxcnn.__main__"]
    assert "jaxcnn.convert" in names and "jaxcnn.layers" in names
    code = BLOCK + (
        "import importlib\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module(n)\n"
        "bad = sorted(m for m in sys.modules if sys.modules[m] is not None\n"
        "             and m.split('.')[0] in ('torch', 'torch_ref', 'torchvision'))\n"
        "assert not bad, bad[:5]\n"
        "print('ok', len(sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


def test_cli_without_torch_lists_the_commands_and_says_how_to_get_them() -> None:
    code = BLOCK + (
        "from jaxcnn.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    print('HELP', e.code)\n"
        "for argv in (['compare', 'lenet', '--epochs', '1'], ['parity', 'lenet', '--train'],\n"
        "             ['bench', '--models', 'lenet'], ['compare', '--help']):\n"
        "    print('RC', main(argv))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HELP 0" in out.stdout and "train" in out.stdout and "compare" in out.stdout
    assert out.stdout.count("RC 2") == 4
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 4 and all(TORCH_MISSING in line for line in lines), lines
    for command in ("compare", "parity", "bench"):
        assert f"jaxcnn {command} {TORCH_MISSING}" in out.stderr
