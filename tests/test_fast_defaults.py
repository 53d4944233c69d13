"""The fast default execution: the allocator set-up, programs compiled ahead and concurrently,
several updates per call chosen by default, and the test pass in one call; each gives the
numbers of the plain path it replaces."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn
from jaxcnn import runtime
from jaxcnn.data import split_sizes
from jaxcnn.training import (
    TrainConfig,
    _programs,
    auto_steps_per_call,
    count_correct_scan,
    create_train_state,
    evaluate_accuracy,
    precompile,
    train,
    train_epoch,
    train_step,
)
from jaxcnn.training._loop import eval_blocks


@pytest.mark.parametrize("full, expected", [
    (0, 1), (1, 1), (16, 16), (64, 64),   # a whole epoch per call up to 64 batches
    (234, 39),                            # Fashion-MNIST at 256: 6 calls of 39
    (100, 50), (128, 64),                 # largest divisor <= 64
    (67, 64),                             # prime: 64 then a call of 3
    (3 * 67, 64),                         # only small divisors (3): 64-blocks
])
def test_auto_steps_per_call(full, expected):
    assert auto_steps_per_call(full) == expected


def test_split_sizes_follow_the_limits():
    assert split_sizes() == (60_000, 10_000)
    assert split_sizes(4096, 1000) == (4096, 1000)
    assert split_sizes(10**9, None) == (60_000, 10_000)


def test_eval_blocks_pad_and_mask():
    idx, valid = eval_blocks(10, 4)
    assert idx.shape == valid.shape == (3, 4)
    assert idx.ravel()[:10].tolist() == list(range(10)) and idx.ravel()[10:].tolist() == [0, 0]
    assert valid.sum() == 10 and not valid.ravel()[10:].any()


def test_tune_allocator(monkeypatch):
    monkeypatch.setattr(runtime, "_configured", {})
    monkeypatch.setenv("JAXCNN_TUNE_MALLOC", "0")
    assert runtime.tune_allocator() is False
    monkeypatch.setenv("JAXCNN_TUNE_MALLOC", "1")
    assert runtime.tune_allocator() is sys.platform.startswith("linux")


def test_tuned_allocator_stops_the_per_step_page_faults():
    """What XLA's CPU runtime does each step: malloc a 40 MiB temporary buffer, write it,
    free it. With glibc's default thresholds each round maps fresh pages (10,240 page faults
    a round); with :func:`runtime.tune_allocator` the block is reused. (The child starts on
    glibc's defaults: the suite's own processes run tuned, see the root conftest.py.)"""
    code = """
import ctypes, ctypes.util, resource, sys
from jaxcnn import runtime
if sys.argv[1] == "1":
    assert runtime.tune_allocator()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
size = 40 << 20
def step():
    p = libc.malloc(size); ctypes.memset(p, 1, size); libc.free(p)
step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""
    glibc_defaults = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], check=True,
                                       capture_output=True, text=True,
                                       env=glibc_defaults).stdout)
              for mode in ("0", "1")}
    assert faults["0"] > 20 * 5_000
    assert faults["1"] < faults["0"] / 20


def test_precompiled_program_is_the_jitted_one(small_data):
    model = jaxcnn.create_model("lenet_bn")
    state = create_train_state(model, jax.random.PRNGKey(0), (1, 28, 28, 1), optax.adam(1e-3))
    x, y = small_data[0].images[:64], small_data[0].labels[:64]
    _programs.precompile(train_step, state, jax.ShapeDtypeStruct(x.shape, x.dtype),
                         jax.ShapeDtypeStruct(y.shape, y.dtype), resize=None,
                         precision="float32")
    copy = jax.tree.map(jnp.copy, state)
    a, ma = _programs.call(train_step, state, x, y, resize=None, precision="float32")
    b, mb = train_step(copy, x, y)
    for u, v in zip(jax.tree.leaves((a, ma)), jax.tree.leaves((b, mb)), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_one_call_test_pass_counts_as_batch_by_batch(small_data):
    model = jaxcnn.create_model("lenet")
    state = create_train_state(model, jax.random.PRNGKey(1), (1, 28, 28, 1), optax.sgd(0.1))
    test_ds = small_data[1]
    fast = evaluate_accuracy(model, state.variables, test_ds, 128)

    class Batches:  # the same data, not on the device as arrays: the per-batch path
        def __len__(self):
            return len(test_ds)

        def batches(self, batch_size, *, shuffle, seed=0, epoch=0):
            return test_ds.batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch)

    assert fast == evaluate_accuracy(model, state.variables, Batches(), 128)
    idx, valid = eval_blocks(len(test_ds), 128)
    logits = model.apply(state.variables, test_ds.images[:, :, :, None] / 255.0)
    expected = int(jnp.sum(jnp.argmax(logits, 1) == test_ds.labels))
    assert int(count_correct_scan(state.variables, test_ds.images, test_ds.labels,
                                  jnp.asarray(idx), jnp.asarray(valid),
                                  apply_fn=model.apply)) == expected


@pytest.mark.parametrize("name", ["lenet", "lenet_bn"])
def test_default_epoch_trains_as_one_step_per_call(small_data, name):
    """The default (several updates per call, the partial last batch as one more call) gives
    the metrics and weights of one train_step per batch, to float32 rounding. (Plain SGD: Adam
    would turn the rounding noise of the biases right before a BatchNorm, whose gradient is
    zero in exact arithmetic, into full-size steps.)"""
    model = jaxcnn.create_model(name)
    results = {}
    for k in (None, 1):
        state = create_train_state(model, jax.random.PRNGKey(0), (1, 28, 28, 1),
                                   optax.sgd(0.1))
        state, stats = train_epoch(state, small_data[0], batch_size=128, epoch=1,
                                   steps_per_call=k, progress=False)
        results[k] = (state, stats)
    (a, sa), (b, sb) = results[None], results[1]
    assert int(a.step) == int(b.step) == 6
    assert sa["train_acc"] == sb["train_acc"] and sa["loss"] == pytest.approx(sb["loss"], 1e-5)
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=0, atol=1e-5)


def test_run_precompiles_every_program_it_uses(small_data, monkeypatch):
    """After :func:`precompile`, a whole run compiles nothing more of its own: every program
    it calls was asked for ahead (by shape), so it could compile while the data loaded. They
    are traced and lowered one at a time in one thread, the training program first, and none
    of them failed."""
    config = TrainConfig(model="lenet_bn", batch_size=128, epochs=2,
                         optimizer=jaxcnn.training.OptimizerConfig(name="adam", lr=1e-3))
    monkeypatch.setattr(_programs, "_cache", OrderedDict())
    lowered = []
    real_lower = _programs._lower

    def lower_spy(jitted, *args):
        fn, _ = _programs._unpack(jitted)
        lowered.append((threading.current_thread().name, getattr(fn, "__name__", "?")))
        return real_lower(jitted, *args)

    monkeypatch.setattr(_programs, "_lower", lower_spy)
    precompile(config, len(small_data[0]), len(small_data[1]))
    asked = set(_programs._cache)
    for fut in list(_programs._cache.values()):
        assert fut.exception(timeout=300) is None
    assert [name for _, name in lowered] == ["train_scan", "_fresh_state", "count_correct_scan"]
    assert len({thread for thread, _ in lowered}) == 1
    compiled_later = []
    real = _programs._submit

    def spy(jitted, args, static, background, identity=None):
        key = _programs._key(jitted, args, static)
        if key not in asked:
            compiled_later.append(getattr(jitted, "__name__", repr(jitted)))
        return real(jitted, args, static, background, identity)

    monkeypatch.setattr(_programs, "_submit", spy)
    result = train(config, datasets=small_data, log=None, progress=False)
    assert len(result.history) == 2
    assert compiled_later == []


def test_init_program_gives_the_values_of_plain_init():
    """The fresh state's one program in both branches of the switch (``auto``: compiled with
    ``INIT_COMPILER_OPTIONS``; ``xla``: XLA's defaults, the same program as ``jax.jit(
    model.init)``, whose values equal eager init): bit for bit the same parameters and
    BatchNorm buffers, the key split and the optimizer's init as run one by one."""
    from jaxcnn.models import build_model
    from jaxcnn.ops import use_kernels
    from jaxcnn.registry import make_config
    from jaxcnn.training._state import INIT_COMPILER_OPTIONS, init_program

    model = build_model(make_config("lenet_bn"))
    tx = optax.adam(1e-3)
    shape = (1, 28, 28, 1)
    key = jax.random.PRNGKey(7)
    _, dropout_key = jax.random.split(key)
    states = {}
    for mode in ("xla", "auto"):
        with use_kernels(mode):
            program = init_program(model, tx)
            assert (mode == "auto") == isinstance(program, _programs.Tuned)
            if mode == "auto":
                assert dict(program.options) == INIT_COMPILER_OPTIONS
            states[mode] = create_train_state(model, key, shape, tx)
    plain, fast = states["xla"], states["auto"]
    assert plain.batch_stats and jax.tree.structure(fast) == jax.tree.structure(plain)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(fast), jax.tree.leaves(plain),
                            strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                      err_msg=jax.tree_util.keystr(path))
    np.testing.assert_array_equal(np.asarray(fast.dropout_key), np.asarray(dropout_key))
    assert int(fast.step) == 0
    expected_opt = tx.init(fast.params)
    assert jax.tree.structure(fast.opt_state) == jax.tree.structure(expected_opt)
    for a, b in zip(jax.tree.leaves(fast.opt_state), jax.tree.leaves(expected_opt), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_new_function_never_gets_a_collected_ones_program(monkeypatch):
    """The program cache's key holds the jitted function itself: while its program is cached it
    stays alive, so a function made later (e.g. the init of a new model or optimizer) cannot
    get the id of a collected one, and with it that one's program."""
    import gc
    import weakref

    monkeypatch.setattr(_programs, "_cache", OrderedDict())
    x = np.arange(3, dtype=np.float32)
    first = jax.jit(lambda v: v + 1)
    alive = weakref.ref(first)
    np.testing.assert_array_equal(_programs.call(first, x), x + 1)
    del first
    gc.collect()
    assert alive() is not None
    for k in range(2, 6):  # new functions of the same shapes each get their own program
        np.testing.assert_array_equal(_programs.call(jax.jit(lambda v, k=k: v + k), x), x + k)
