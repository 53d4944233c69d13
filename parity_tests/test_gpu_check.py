"""``scripts/gpu-check.sh`` runs its whole sequence on the CPU in ``--small`` mode (the same
steps a GPU machine runs, with small sizes), writes its logs, JSON and summary, and fails
when a step fails."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check.sh"


@pytest.mark.slow
def test_gpu_check_runs_small_on_cpu(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable}
    proc = subprocess.run([str(SCRIPT), str(tmp_path), "--small"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split()[0] for line in summary] == ["devices", "parity", "bench",
                                                     "train-bf16"]
    assert all(" rc=0 " in line for line in summary)
    parity = (tmp_path / "parity.log").read_text()
    assert re.search(r"^\d+ passed", parity, re.M) and "failed" not in parity, parity
    report = json.loads((tmp_path / "bench-28px.json").read_text())
    assert {r["framework"] for r in report["rows"]} >= {"jaxcnn", "torch eager"}
    assert "epoch 1, loss" in (tmp_path / "train-bf16.log").read_text()


def test_gpu_check_fails_when_a_step_fails(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    proc = subprocess.run([str(SCRIPT), str(tmp_path / "out"), "--small"],
                          env={**os.environ, "PYTHON": str(fake)}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "devices rc=3" in (tmp_path / "out" / "summary.txt").read_text()
