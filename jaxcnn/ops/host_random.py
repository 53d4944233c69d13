"""JAX's default PRNG (threefry2x32, partitionable), computed by numpy on the host.

:data:`HOST_THREEFRY` is a JAX PRNG implementation (``jax.extend.random.define_prng_impl``)
whose ``split``, ``fold_in`` and ``random_bits`` give exactly the bits of JAX's own
threefry2x32 implementation (with ``jax_threefry_partitionable``, JAX's default since 0.5) for
the same key data, through ``jax.pure_callback``. A program that draws with it needs no
compiled threefry: XLA's CPU backend spends most of a fresh state's compilation on the
threefry hash of every parameter's draw (LeNet 0.74 -> 0.17 s in isolation, more on a busy
CPU; AlexNet's init took 5.8 s to compile). Used for the init program when the fast CPU kernels
are selected (:func:`host_init_key`); the definition it must equal is ``jax.random``'s, which
the tests compare bit for bit.

A program with a host callback is not kept by JAX's persistent cache: it is compiled in every
process (cheaply, there is no hash left in it).
"""

from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import random as jex_random

from .select import fast_cpu_kernels

_U32 = np.uint32
#: Draws of more elements than this take JAX's compiled threefry inside the program: on the
#: host a draw costs about 22 ns an element (one core), a compiled one about 60 ms of
#: compilation, fast to run (AlexNet's two big Linear layers: 43M draws, 1 s on the host).
HOST_BITS_LIMIT = 1 << 20
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k1: np.ndarray, k2: np.ndarray, x1: np.ndarray, x2: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The Threefry-2x32 hash (20 rounds) of the counter pairs ``(x1, x2)`` under the key
    ``(k1, k2)``; uint32 arrays that broadcast together. JAX's ``threefry2x32_p``. In place
    on two result arrays."""
    k1, k2, x1, x2 = (np.asarray(v, _U32) for v in (k1, k2, x1, x2))
    with np.errstate(over="ignore"):
        ks = (k1, k2, k1 ^ k2 ^ _U32(0x1BD11BDA))
        shape = np.broadcast_shapes(*(v.shape for v in (k1, x1, x2)))
        a = np.add(np.broadcast_to(x1, shape), ks[0], dtype=_U32)
        b = np.add(np.broadcast_to(x2, shape), ks[1], dtype=_U32)
        t = np.empty_like(b)
        for i in range(5):
            for r in _ROTATIONS[i % 2]:
                a += b
                np.left_shift(b, _U32(r), out=t)
                b >>= _U32(32 - r)
                b |= t
                b ^= a
            a += ks[(i + 1) % 3]
            b += ks[(i + 2) % 3]
            b += _U32(i + 1)
    return a, b


def _counters(lead: tuple[int, ...], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """JAX's ``iota_2x32_shape(shape)``: the row-major index of every element as a 64-bit
    count, split into its high and low words; with ``len(lead)`` axes of size 1 in front."""
    count = np.arange(math.prod(shape), dtype=np.uint64).reshape((1,) * len(lead) + shape)
    return (count >> np.uint64(32)).astype(_U32), (count & np.uint64(0xFFFFFFFF)).astype(_U32)


def _key_words(keys: np.ndarray, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """The two words of a batch of keys ``(*lead, 2)``, with ``ndim`` axes of size 1 behind."""
    k = np.asarray(keys, _U32)
    pad = (...,) + (None,) * ndim
    return k[..., 0][pad], k[..., 1][pad]


def _hash_counters(keys: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Threefry of every element's counter (:func:`_counters`) under each key ``(*lead, 2)``:
    two uint32 arrays ``(*lead, *shape)``, as JAX's partitionable split and bits compute."""
    k1, k2 = _key_words(keys, len(shape))
    return threefry2x32(k1, k2, *_counters(keys.shape[:-1], shape))


def _np_split(keys: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(np.broadcast_arrays(*_hash_counters(keys, shape)), axis=-1)


def _np_fold_in(keys: np.ndarray, data: np.ndarray) -> np.ndarray:
    # JAX: threefry_2x32(key, threefry_seed(data)); a uint32 seed is the pair (0, data).
    k1, k2 = _key_words(keys, 0)
    b1, b2 = threefry2x32(k1, k2, np.zeros_like(k1), np.asarray(data, _U32))
    return np.stack(np.broadcast_arrays(b1, b2), axis=-1)


def _np_bits(keys: np.ndarray, bit_width: int, shape: tuple[int, ...]) -> np.ndarray:
    b1, b2 = _hash_counters(keys, shape)
    if bit_width == 64:
        return (b1.astype(np.uint64) << np.uint64(32)) | b2.astype(np.uint64)
    return (b1 ^ b2).astype(f"uint{bit_width}")


def _callback(fn: object, out_shape: tuple[int, ...], dtype: np.dtype, *args: jax.Array
              ) -> jax.Array:
    # "expand_dims": a batch of keys (vmap) arrives with its batch axes in front, which the
    # numpy functions broadcast over.
    return jax.pure_callback(fn, jax.ShapeDtypeStruct(out_shape, dtype), *args,
                             vmap_method="expand_dims")


def _split(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    shape = tuple(shape)
    return _callback(lambda k: _np_split(k, shape), (*shape, 2), np.dtype(_U32), key)


def _fold_in(key: jax.Array, data: jax.Array) -> jax.Array:
    return _callback(_np_fold_in, (2,), np.dtype(_U32), key, jnp.asarray(data, jnp.uint32))


def _random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
    if bit_width not in (8, 16, 32, 64):
        raise TypeError(f"random bits of width {bit_width}: use 8, 16, 32 or 64")
    shape = tuple(shape)
    if math.prod(shape) > HOST_BITS_LIMIT:  # JAX's own, compiled: the same bits
        return jex_random.threefry_prng_impl.random_bits(key, bit_width, shape)
    return _callback(lambda k: _np_bits(k, bit_width, shape), shape,
                     np.dtype(f"uint{bit_width}"), key)


_THREEFRY = jex_random.threefry_prng_impl.name
#: The PRNG implementation: JAX's threefry2x32 bits, drawn on the host (see the module doc).
HOST_THREEFRY = jex_random.define_prng_impl(
    key_shape=(2,), seed=jex_random.threefry_prng_impl.seed, split=_split,
    random_bits=_random_bits, fold_in=_fold_in, name="threefry2x32_host", tag="fry_host")


def seed_key(seed: int) -> np.ndarray | jax.Array:
    """``jax.random.PRNGKey(seed)`` without running a program: for an integer ``seed``, JAX's
    default threefry2x32 and 32-bit integers (``jax_enable_x64`` off) its key data is
    ``[0, seed mod 2**32]`` (uint32 ``(2,)``), made here with numpy. ``jax.random.PRNGKey``
    compiles two small programs for it on first use (0.1-0.2 s of a cold start's CPU, with
    ``jnp.zeros``' two more); any other case is left to it."""
    if jax.config.jax_default_prng_impl != _THREEFRY or jax.config.jax_enable_x64:
        return jax.random.PRNGKey(seed)
    return np.array([0, operator.index(seed) & 0xFFFFFFFF], dtype=_U32)


def draws_on_host() -> bool:
    """Whether :func:`host_init_key` draws on the host: when the fast CPU kernels are
    selected (:func:`~jaxcnn.ops.select.fast_cpu_kernels`) and JAX's threefry is the
    partitionable one (the one :data:`HOST_THREEFRY` computes)."""
    return fast_cpu_kernels() and bool(jax.config.jax_threefry_partitionable)


def host_init_key(key: jax.Array) -> jax.Array:
    """The init key for ``model.init``: a threefry key (a typed one, or raw key data of JAX's
    default implementation when that is threefry: uint32 ``(2,)``) as a :data:`HOST_THREEFRY`
    key when :func:`draws_on_host`; otherwise, or for a key of another implementation,
    ``key`` itself. The same draws either way."""
    if not draws_on_host():
        return key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != _THREEFRY:
            return key
        key = jax.random.key_data(key)
    elif jax.config.jax_default_prng_impl != _THREEFRY:
        return key
    return jax.random.wrap_key_data(key, impl=HOST_THREEFRY)
