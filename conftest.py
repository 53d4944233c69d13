"""Fixtures shared by ``tests/`` and ``parity_tests/``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def dist_runs(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The data-parallel runs of ``tests/_dist_runs.py`` (once per session, also when
    pytest-xdist spreads the tests over several workers: the first worker to ask runs them
    under a file lock, the others read its files): ``.npz`` files under ``<dir>/<run>/``."""
    from tests._dist_runs import run_all

    if worker_id == "master":  # no xdist
        return run_all(tmp_path_factory.mktemp("dist"))
    from filelock import FileLock  # a torch dependency

    shared = tmp_path_factory.getbasetemp().parent  # common to the session's workers
    out, done = shared / "dist_runs", shared / "dist_runs.done"
    with FileLock(str(shared / "dist_runs.lock")):
        if not done.exists():
            out.mkdir(exist_ok=True)
            run_all(out)
            done.touch()
    return out
