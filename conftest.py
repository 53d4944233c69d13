"""Fixtures shared by ``tests/`` and ``parity_tests/``."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Test files that share costly state run in one pytest-xdist worker (``make test`` runs
#: ``--dist loadfile``, which ``pytest_xdist_make_scheduler`` extends by these groups; every
#: other file is a group of its own): the compiled train steps of ``parity_tests._cases.
#: jax_fns`` (GoogLeNet's three take 35 s to compile), and the ``dist_runs`` fixture's runs.
SHARED_GROUPS = {
    "parity_tests/test_parity_core.py": "jax_fns",
    "parity_tests/test_optimizer_parity.py": "jax_fns",
    "tests/test_distributed.py": "dist_runs",
    "parity_tests/test_distributed_torch.py": "dist_runs",
}
#: Groups that take longest (measured on 2 cores), handed out first so that the workers end
#: together; the others follow in collection order.
SLOW_GROUPS = ("jax_fns", "dist_runs", "tests/test_training.py",
               "parity_tests/test_registry_and_init.py", "parity_tests/test_parity_graph.py",
               "parity_tests/test_parity_report.py")


def group_of(nodeid: str) -> str:
    """The pytest-xdist group of a test: its file, or the file's ``SHARED_GROUPS`` entry."""
    path = nodeid.split("::")[0]
    return SHARED_GROUPS.get(path, path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the ``SLOW_GROUPS`` first, each file's tests in their order (the scheduler sends
    whole groups to the workers in this order when run with ``--no-loadscope-reorder``)."""
    rank = {g: i for i, g in enumerate(SLOW_GROUPS)}
    items.sort(key=lambda item: rank.get(group_of(item.nodeid), len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """With ``--dist loadfile``: pytest-xdist's file scheduling, a scope per ``group_of``
    (files of one ``SHARED_GROUPS`` entry together). Other ``--dist`` modes: xdist's own."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)


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
