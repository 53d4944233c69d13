"""``jaxcnn.ops.host_random``: JAX's threefry bits drawn on the host, bit for bit, in every way
the init program draws (split, fold_in, uniform, normal, each bit width, batches of keys,
scalars, draws above ``HOST_BITS_LIMIT``), and the fresh state it gives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.models import build_model
from jaxcnn.ops import host_random, use_kernels
from jaxcnn.registry import make_config
from jaxcnn.training._state import INIT_COMPILER_OPTIONS

BIG = host_random.HOST_BITS_LIMIT + 3

#: name -> a function of a key (raw or host) that draws as the layers' init and flax do.
DRAWS = {
    "split": lambda k: jax.random.split(k, 3),
    "split_2d": lambda k: jax.random.split(k, (2, 3)),
    "fold_in": lambda k: jax.random.fold_in(k, 0xDEADBEEF),
    "uniform": lambda k: jax.random.uniform(k, (5, 7, 3), minval=-0.3, maxval=0.3),
    "uniform_scalar": lambda k: jax.random.uniform(k, ()),
    "normal": lambda k: jax.random.normal(k, (4, 3, 2)),
    "bits8": lambda k: jax.random.bits(k, (9,), jnp.uint8),
    "bits16": lambda k: jax.random.bits(k, (9,), jnp.uint16),
    "bits64": lambda k: jax.random.bits(k, (9,), jnp.uint64),
    "chained": lambda k: jax.random.uniform(jax.random.fold_in(jax.random.split(k)[1], 5),
                                            (300, 17)),
    "vmap_draws": lambda k: jax.vmap(lambda kk: jax.random.uniform(kk, (4,)))(
        jax.random.split(k, 5)),
    "vmap_fold_in": lambda k: jax.vmap(jax.random.fold_in)(
        jax.random.split(k, 5), jnp.arange(5, dtype=jnp.uint32)),
    "above_limit": lambda k: jax.random.uniform(k, (BIG,)),
}


def _data(x: jax.Array) -> np.ndarray:
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


@pytest.mark.parametrize("name", list(DRAWS))
def test_host_draws_are_jax_threefry_bits(name):
    draw = DRAWS[name]
    with jax.enable_x64(name == "bits64"):  # JAX draws 64-bit words only with x64
        raw = jax.random.PRNGKey(7)
        host = jax.random.wrap_key_data(raw, impl=host_random.HOST_THREEFRY)
        expected = _data(jax.jit(draw)(raw))
        for got in (_data(draw(host)), _data(jax.jit(draw)(host))):
            assert got.dtype == expected.dtype and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)
    if name == "bits64":
        assert expected.dtype == np.uint64


#: Random123's known answers for Threefry-2x32, 20 rounds: (key, counter) -> output.
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize(("key", "counter", "expected"), KNOWN_ANSWERS)
def test_threefry_known_answers(key, counter, expected):
    k1, k2, x1, x2 = (np.array([v], np.uint32) for v in (*key, *counter))
    a, b = host_random.threefry2x32(k1, k2, x1, x2)
    assert (int(a[0]), int(b[0])) == expected


@pytest.mark.parametrize("kind", ["raw", "typed"])
def test_host_init_key_follows_the_switch(kind):
    """Raw key data and typed threefry keys are drawn on the host with the fast kernels; the
    plain kernels, and keys of another implementation, keep their key."""
    key = jax.random.PRNGKey(0) if kind == "raw" else jax.random.key(0)
    host_impl = jax.random.key_impl(jax.random.wrap_key_data(jax.random.PRNGKey(0),
                                                             impl=host_random.HOST_THREEFRY))
    with use_kernels("xla"):
        assert host_random.host_init_key(key) is key
    with use_kernels("auto"):
        wrapped = host_random.host_init_key(key)
        assert jax.random.key_impl(wrapped) == host_impl
        np.testing.assert_array_equal(_data(wrapped), _data(key))
        np.testing.assert_array_equal(_data(jax.random.uniform(wrapped, (5,))),
                                      _data(jax.random.uniform(key, (5,))))
        other = jax.random.key(0, impl="rbg")
        assert host_random.host_init_key(other) is other


def test_alexnet_init_is_jax_threefry_init():
    """AlexNet draws on both sides of ``HOST_BITS_LIMIT`` (its two large Linear layers take
    the compiled threefry): every parameter as drawn with JAX's own keys."""
    model = build_model(make_config("alexnet"))
    x = jax.ShapeDtypeStruct((1, 224, 224, 1), jnp.float32)
    key = jax.random.PRNGKey(3)

    def init(wrap):
        fn = jax.jit(lambda k, x: model.init(wrap(k), x, train=False))
        program = fn.lower(jax.ShapeDtypeStruct((2,), jnp.uint32), x).compile(
            INIT_COMPILER_OPTIONS)
        return program(key, jnp.zeros(x.shape))["params"]

    host = init(lambda k: jax.random.wrap_key_data(k, impl=host_random.HOST_THREEFRY))
    plain = init(lambda k: k)
    sizes = [a.size for a in jax.tree.leaves(plain)]
    assert max(sizes) > host_random.HOST_BITS_LIMIT > min(sizes)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(host), jax.tree.leaves(plain),
                            strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                      err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("seed", [0, 1, 42, 2**31 - 1, -1, -2**31, 2**31, 2**32 - 1, 2**32,
                                  2**40 + 5, -2**40, np.int64(7), np.uint32(2**32 - 1),
                                  np.int32(-3)])
def test_seed_key_is_prng_key_without_a_program(seed):
    """``seed_key`` gives ``jax.random.PRNGKey``'s key data as a numpy array (no program
    compiled or run), wrap-around of large and negative seeds included."""
    key = host_random.seed_key(seed)
    assert isinstance(key, np.ndarray) and key.dtype == np.uint32
    np.testing.assert_array_equal(key, np.asarray(jax.random.PRNGKey(seed)))


def test_seed_key_leaves_other_cases_to_jax():
    with jax.enable_x64(True):
        key = host_random.seed_key(2**40 + 5)
        assert isinstance(key, jax.Array)
        np.testing.assert_array_equal(key, jax.random.PRNGKey(2**40 + 5))
