"""Fixtures shared by ``tests/`` and ``parity_tests/``."""

from __future__ import annotations

import os
import shutil
import tempfile
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


#: JAX's persistent compilation cache of the run (``pytest_configure``): programs whose
#: compilation took at least this many seconds are kept, so that an identical program compiled
#: again by another test, worker or child process is loaded instead.
XLA_CACHE_MIN_COMPILE_SECS = 0.2
#: The folder this process made (and removes at the end); absent in the processes that inherit it.
_OWN_CACHE = pytest.StashKey[str]()


def memory_env() -> dict[str, str]:
    """The memory settings of every test process, as environment variables (set in the run's
    first process, before the pytest-xdist workers and the tests' subprocesses start, which
    inherit them): glibc keeps freed blocks of up to ``jaxcnn.runtime.ALLOCATOR_THRESHOLD``
    (1 GiB) for reuse (``jaxcnn.runtime.tune_allocator``, what ``jaxcnn`` does for itself) and
    numpy does not ask for transparent huge pages. The parity tests copy and compare large
    float64 arrays; each fresh block was new pages for the kernel to fault in and zero
    (measured: AlexNet's optimizer trajectory, 3.6 million page faults, sys 28 s of 57 s wall;
    with these settings sys 22 s, 41 s wall)."""
    from jaxcnn import runtime

    threshold = str(runtime.ALLOCATOR_THRESHOLD)
    return {"MALLOC_MMAP_THRESHOLD_": threshold, "MALLOC_TRIM_THRESHOLD_": threshold,
            "NUMPY_MADVISE_HUGEPAGE": "0"}


def pytest_configure(config: pytest.Config) -> None:
    """One XLA program cache for the whole run, in a fresh folder (removed at the end): the
    pytest-xdist workers and every process a test starts (``jaxcnn train``, ``jaxcnn bench``,
    a nested pytest) inherit it through ``$JAX_COMPILATION_CACHE_DIR``, so a program that
    several tests compile (the same model, shapes and options) is compiled once; a test that
    needs its own cache sets its own. The user's cache (``~/.cache/jaxcnn/xla``) is never
    read or written. jaxcnn's program store (``jaxcnn.training._store``) stays off in the
    test processes: tests patch jaxcnn's functions, which its keys cannot see (JAX's keys,
    computed from the compiled program itself, can). The memory settings: :func:`memory_env`."""
    first = "JAXCNN_TEST_XLA_CACHE" not in os.environ
    if first:  # the run's first process: make the folder
        folder = tempfile.mkdtemp(prefix="jaxcnn-test-xla-")
        os.environ["JAXCNN_TEST_XLA_CACHE"] = folder
        config.stash[_OWN_CACHE] = folder
    folder = os.environ["JAXCNN_TEST_XLA_CACHE"]
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(XLA_CACHE_MIN_COMPILE_SECS)
    import jax
    import numpy as np

    from jaxcnn import runtime
    from jaxcnn.training import _store

    if first:  # before the workers start
        for name, value in memory_env().items():
            os.environ.setdefault(name, value)
    runtime.tune_allocator()  # this process's own allocator (the environment is read at start)
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 / 1
    core.multiarray._set_madvise_hugepage(os.environ["NUMPY_MADVISE_HUGEPAGE"] != "0")

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", XLA_CACHE_MIN_COMPILE_SECS)
    _store.ENABLED = False


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_OWN_CACHE, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


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
