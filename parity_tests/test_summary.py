"""The end-of-run parity summary (``parity_tests/conftest.py``) when pytest-xdist runs the
tests in worker processes: each worker hands its diffs, flips and planted failures to the
controller, which prints them for the whole run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_workers_records_reach_the_summary() -> None:
    """Two parity tests on two xdist workers (``--dist load``: one test each): the controller,
    which runs no test itself, prints the per-model table with both tests' rows and the planted
    failure's message."""
    tests = ["parity_tests/test_parity_core.py::test_train_outputs_and_gradients_match[lenet]",
             "parity_tests/test_optimizer_parity.py::test_a_planted_error_is_caught[momentum]"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "load", "-q",
                          "-p", "no:cacheprovider", *tests], cwd=ROOT, env=env, text=True,
                         capture_output=True, timeout=600)
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
    assert "2 passed" in out
    assert "parity: planted errors and the failure each caused" in out
    assert "trajectory: momentum: lenet step " in out
    table = out[out.index("parity: largest max|diff| per model and check"):]
    assert "parameter gradients, float64 (jaxcnn vs torch):\n  lenet " in table
    assert "train output (same dropout masks):\n  lenet " in table
