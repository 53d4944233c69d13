"""Fixtures shared by ``tests/`` and ``parity_tests/``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def dist_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data-parallel runs of ``tests/_dist_runs.py`` (once per session): ``.npz`` files
    under ``<dir>/<run>/``."""
    from tests._dist_runs import run_all

    return run_all(tmp_path_factory.mktemp("dist"))
