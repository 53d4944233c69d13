"""Compiled programs kept across processes (``jaxcnn.training._store``): a later run loads
them without tracing, runs the same numbers, recompiles a damaged file, and every ingredient
that selects a program changes its key."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.compilation_cache.compilation_cache import reset_cache

from jaxcnn.ops import use_kernels
from jaxcnn.training import OptimizerConfig, TrainConfig, _programs, _store, train
from jaxcnn.training.steps import train_scan, train_step

CONFIG = TrainConfig(model="lenet_bn", batch_size=128, epochs=1,
                     optimizer=OptimizerConfig(name="adam", lr=1e-3))


@pytest.fixture
def store(tmp_path, monkeypatch):
    """The store on, in a fresh folder, and a fresh in-process program cache (a new process);
    JAX's persistent cache (the suite's, see the root conftest.py) off, so that every program
    is compiled here."""
    folder = tmp_path / "programs"
    monkeypatch.setattr(_store, "ENABLED", True)
    monkeypatch.setattr(_store, "directory", lambda: folder)
    monkeypatch.setattr(_programs, "_cache", OrderedDict())
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    reset_cache()
    yield folder
    jax.config.update("jax_enable_compilation_cache", enabled)
    reset_cache()


def _spy(monkeypatch):
    calls = {"load": [], "save": []}
    load, save = _store.load, _store.save

    def spy_load(name, args_tree, shared):
        program = load(name, args_tree, shared)
        calls["load"].append(program is not None)
        return program

    def spy_save(name, compiled, shared):
        calls["save"].append(save(name, compiled, shared))
        return calls["save"][-1]

    monkeypatch.setattr(_store, "load", spy_load)
    monkeypatch.setattr(_store, "save", spy_save)
    return calls


def _run(data):
    result = train(CONFIG, datasets=data, log=None, progress=False)
    return result.history[0], jax.tree.map(np.asarray, (result.state.params,
                                                       result.state.batch_stats))


def _assert_same(a, b):
    (stats_a, tree_a), (stats_b, tree_b) = a, b
    assert (stats_a.loss, stats_a.train_acc, stats_a.test_acc) == (
        stats_b.loss, stats_b.train_acc, stats_b.test_acc)
    for u, v in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True):
        np.testing.assert_array_equal(u, v)


def test_a_later_run_loads_every_program_without_compiling(small_data, store, monkeypatch):
    """The first run compiles its programs and keeps two (the 6-step training call with the
    partial last batch padded into it, the test pass; the init program draws on the host, its
    host callbacks do not serialise, and it compiles in a fraction of a second in every
    process); a new process (a fresh in-process cache) loads both, traces and compiles
    neither, and trains bit for bit as the first run. Then one file is damaged: the next
    process compiles that program again, replaces the file, and still trains the same."""
    calls = _spy(monkeypatch)
    first = _run(small_data)
    assert calls == {"load": [False] * 2, "save": [True] * 2}
    assert len(list(store.iterdir())) == 2
    monkeypatch.setattr(_programs, "_cache", OrderedDict())
    calls["load"].clear(), calls["save"].clear()
    _assert_same(first, _run(small_data))
    assert calls == {"load": [True] * 2, "save": []}

    victim = sorted(store.iterdir())[0]
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    victim.write_bytes(bytes(blob))
    monkeypatch.setattr(_programs, "_cache", OrderedDict())
    calls["load"].clear(), calls["save"].clear()
    _assert_same(first, _run(small_data))
    assert sorted(calls["load"]) == [False, True] and calls["save"] == [True]
    assert victim.read_bytes() != bytes(blob)  # replaced by a good one


def test_without_jax_cache_nothing_is_kept(monkeypatch):
    """The store lives in JAX's compilation cache folder and is off when that cache is (or
    when switched off)."""
    monkeypatch.setattr(_store, "ENABLED", True)
    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert _store.directory() is None
        jax.config.update("jax_compilation_cache_dir", "/some/where")
        assert _store.directory() == Path("/some/where") / _store.FOLDER
        monkeypatch.setattr(_store, "ENABLED", False)
        assert _store.directory() is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def _leaves(n=64, dtype=jnp.float32, weak=False):
    return [jax.ShapeDtypeStruct((n, 3), dtype, weak_type=weak)]


BASE = {"identity": "config-a", "fn": train_scan, "options": (), "leaves": _leaves,
        "static": {"resize": None, "precision": "float32"}}


def _key(**changes):
    args = {**BASE, **changes}
    return _store.key(args["identity"], args["fn"], args["options"], args["leaves"](),
                      args["static"])


@pytest.mark.parametrize("what, change", [
    ("identity", lambda mp: {"identity": "config-b"}),
    ("function", lambda mp: {"fn": train_step}),
    ("compiler options", lambda mp: {"options": (("xla_backend_optimization_level", 1),)}),
    ("static argument", lambda mp: {"static": {"resize": 32, "precision": "float32"}}),
    ("static precision", lambda mp: {"static": {"resize": None, "precision": "bfloat16"}}),
    ("shape", lambda mp: {"leaves": lambda: _leaves(n=65)}),
    ("dtype", lambda mp: {"leaves": lambda: _leaves(dtype=jnp.bfloat16)}),
    ("weak type", lambda mp: {"leaves": lambda: _leaves(weak=True)}),
    ("XLA_FLAGS", lambda mp: mp.setenv("XLA_FLAGS", "--xla_cpu_use_onednn=false")),
    ("JAXCNN_KERNELS", lambda mp: mp.setenv("JAXCNN_KERNELS", "xla")),
    ("package source", lambda mp: mp.setattr(_store, "_source_digest", lambda: "edited")),
    ("a package version", lambda mp: mp.setattr(_store, "_version", lambda name: "0.0")),
    ("the CPU", lambda mp: mp.setattr(_store, "_cpu", lambda: "another CPU")),
])
def test_every_ingredient_changes_the_key(monkeypatch, what, change):
    base = _key()
    assert base == _key() and len(base) == 64
    changes = change(monkeypatch) or {}
    assert _key(**changes) != base, what


def test_jax_configuration_and_kernel_mode_change_the_key():
    base = _key()
    with use_kernels("xla"):
        assert _key() != base
    before = jax.config.jax_default_matmul_precision
    try:
        jax.config.update("jax_default_matmul_precision",
                          "bfloat16" if before in ("highest", "float32") else "highest")
        assert _key() != base
    finally:
        jax.config.update("jax_default_matmul_precision", before)
    assert _key() == base


def test_cache_location_does_not_change_the_key(monkeypatch):
    base = _key()
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
    assert _key() == base


def test_no_key_for_several_processes(monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert _key() is None


def test_second_cli_run_traces_no_program(tmp_path):
    """Two ``jaxcnn train`` processes on one cache folder: the second traces, lowers and
    compiles neither the training nor the test program (JAX logs every trace, lowering and
    compilation; the init program, with its host draws, is compiled in each), and prints the
    same epoch line. Then, with the store emptied, a run whose programs
    come from JAX's own cache keeps none of them (they do not serialise intact again) and
    trains the same."""
    cache = tmp_path / "xla"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu",
           "JAX_LOG_COMPILES": "1"}
    args = [sys.executable, "-m", "jaxcnn", "train", "--model", "lenet", "--limit-train", "384",
            "--limit-test", "128", "--batch-size", "128", "--epochs", "1"]

    def run():
        r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r

    runs = [run(), run()]
    for name in ("train_scan", "count_correct_scan"):
        for step in (f"MLIR module conversion jit({name})", f"XLA compilation of jit({name})"):
            assert step in runs[0].stderr and step not in runs[1].stderr, step
        assert f"Finished tracing {name} " not in runs[1].stderr, name
    # The init program draws on the host (jaxcnn.ops.host_random): compiled in every run.
    assert all("XLA compilation of jit(_fresh_state)" in r.stderr for r in runs)
    folder = cache / _store.FOLDER
    assert len(list(folder.iterdir())) == 2
    shutil.rmtree(folder)
    runs.append(run())
    assert "Persistent compilation cache hit for 'jit_train_scan'" in runs[2].stderr
    assert not folder.exists()
    epoch = [[ln.rsplit(", time", 1)[0] for ln in r.stdout.splitlines()
              if ln.startswith("epoch 1,")] for r in runs]
    assert len(epoch[0]) == 1 and all(e == epoch[0] for e in epoch), epoch


def test_a_program_from_jax_cache_is_not_kept(store, monkeypatch):
    """The guard of the test above, in process: a compilation during which JAX reports a hit
    of its own cache keeps nothing; a fresh one is kept."""
    fn = jax.jit(lambda x: x * 2 + 1)
    arg = (jax.ShapeDtypeStruct((3,), jnp.float32),)
    hits = iter([0, 1])
    monkeypatch.setattr(_store, "jax_cache_hits", lambda: next(hits))
    _programs._compile(fn, arg, {}, identity="a")
    assert not store.exists()
    monkeypatch.setattr(_store, "jax_cache_hits", lambda: 0)
    program = _programs._compile(fn, arg, {}, identity="a")
    assert len(list(store.iterdir())) == 1
    np.testing.assert_array_equal(np.asarray(program(jnp.arange(3.0))), [1.0, 3.0, 5.0])


def test_a_model_registered_elsewhere_is_not_kept(monkeypatch):
    """A model built by code outside jaxcnn (whose source is not in the key) gets no identity,
    so its programs are compiled in every process, never kept."""
    from jaxcnn import registry
    from jaxcnn.training._run import _model_tx_shape

    lenet = registry.get_spec("lenet")

    def build(config):  # code of this file: edits to it would not change the key
        return lenet.build(config)

    monkeypatch.setitem(registry._REGISTRY, "outside_lenet",
                        registry.ModelSpec("outside_lenet", lenet.config, 28, "test", build))
    outside = TrainConfig(model="outside_lenet", batch_size=128, epochs=1)
    assert _model_tx_shape(outside, 1)[3] is None
    assert _model_tx_shape(TrainConfig(model="lenet", batch_size=128, epochs=1), 1)[3]


_TWO_DEVICES_SCRIPT = """
import jax, jax.numpy as jnp
from jaxcnn import runtime
from jaxcnn.training import _programs
runtime.enable_compilation_cache()
double = jax.jit(lambda x: x * 2)
_programs.precompile(double, jax.ShapeDtypeStruct((4,), jnp.float32), identity="double")
print(len(jax.devices()), _programs.call(double, jnp.arange(4.0)).tolist())
"""


def test_a_one_device_program_loads_in_a_process_with_several_devices(tmp_path):
    """With virtual CPU devices (``JAX_NUM_CPU_DEVICES=2``: ``jaxcnn train --devices N``), a
    kept one-device program (e.g. the state's init) is loaded onto the device it was compiled
    for: loaded onto every device, it asked for two shards of one-device arguments and the
    second run failed."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path), "JAX_PLATFORMS": "cpu",
           "JAX_NUM_CPU_DEVICES": "2"}
    outs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", _TWO_DEVICES_SCRIPT], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout.strip())
    assert outs == ["2 [0.0, 2.0, 4.0, 6.0]"] * 2
    assert len(list((tmp_path / _store.FOLDER).iterdir())) == 1
