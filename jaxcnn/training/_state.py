"""The training state: one pytree with everything a step reads and writes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from ..ops.host_random import draws_on_host, host_init_key
from ..ops.select import fast_cpu_kernels
from . import _programs


class TrainState(struct.PyTreeNode):
    """Everything that changes during training (like flax ``examples/imagenet``).

    Attributes:
      step: int32 scalar, optimizer updates done so far (the global step).
      params: the ``'params'`` collection.
      batch_stats: the ``'batch_stats'`` collection (``{}`` for models without BatchNorm).
      opt_state: the optax state of ``tx``.
      dropout_key: raw uint32 PRNG key; each step splits it (deterministic dropout).
      apply_fn: ``model.apply`` (static).
      tx: the optax transformation (static).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    dropout_key: jax.Array
    apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def variables(self) -> dict[str, Any]:
        """``{'params': ..., 'batch_stats': ...}`` for ``model.apply`` (no empty collection)."""
        return variables_of(self.params, self.batch_stats)


def variables_of(params: Any, batch_stats: Any) -> dict[str, Any]:
    """The variables dict of ``params`` and ``batch_stats`` (left out when empty)."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


#: XLA options of the init program on the CPU (:func:`init_program`): LLVM's level-1
#: pipeline compiles the threefry draws of every parameter 3-6x faster than the default level
#: (LeNet 10.7 -> 2.3 s, AlexNet 33.7 -> 5.8 s, ResNet-18 33.4 -> 11.6 s on a 2-core CPU) and
#: gives the same bits (integer hashing; level 0 would differ in the last bit of 15% of the
#: values). Tested against the default compilation (tests/test_fast_defaults.py). Most draws
#: are now made on the host (:mod:`jaxcnn.ops.host_random`); the level still serves the
#: large ones left in the program.
INIT_COMPILER_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 1}


def _fresh_state(model: nn.Module, optimizer: optax.GradientTransformation, key: jax.Array,
                 x: jax.Array) -> TrainState:
    init_key, dropout_key = jax.random.split(key)
    variables = model.init(host_init_key(init_key), x, train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=optimizer.init(params), dropout_key=dropout_key,
                      apply_fn=model.apply, tx=optimizer)


@functools.lru_cache(maxsize=32)
def _jitted_fresh_state(model: nn.Module, optimizer: optax.GradientTransformation
                        ) -> Callable[..., Any]:
    return jax.jit(functools.partial(_fresh_state, model, optimizer))


def init_program(model: nn.Module, optimizer: optax.GradientTransformation) -> Any:
    """The one compiled program that makes a fresh state from ``(key, x)`` (the key split, the
    layers' init, the optimizer's init: the values of running them one by one), for
    :mod:`._programs`: compiled with :data:`INIT_COMPILER_OPTIONS` when the fast CPU kernels are
    selected (:func:`jaxcnn.ops.select.fast_cpu_kernels`), with XLA's defaults otherwise. With
    the fast kernels the layers' draws are made on the host, the same bits
    (:func:`jaxcnn.ops.host_random.host_init_key`), and the program is not kept across
    processes (:mod:`._store`): it is compiled in each, in a fraction of a second."""
    options = INIT_COMPILER_OPTIONS if fast_cpu_kernels() else None
    return _programs.Tuned.of(_jitted_fresh_state(model, optimizer), options)


def create_train_state(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...],
                       optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state: ``model.init(init_key, zeros(input_shape), train=False)`` (torch-default
    init from the layers) and ``optimizer.init(params)``; ``key`` is split into the init key
    and the dropout key. ``input_shape`` is NHWC, e.g. ``(1, 28, 28, 1)``. One compiled
    program (:func:`init_program`)."""
    key = key if isinstance(key, np.ndarray) else jnp.asarray(key)  # numpy: no program runs
    return _programs.call(init_program(model, optimizer), key, np.zeros(input_shape, np.float32))


def precompile_init(model: nn.Module, input_shape: tuple[int, ...],
                    optimizer: optax.GradientTransformation, identity: str | None = None) -> None:
    """Start compiling the init program of :func:`create_train_state` in the background
    (:func:`~._programs.precompile`; ``identity``: the configuration that built ``model`` and
    ``optimizer``, to keep the program across processes)."""
    if draws_on_host():  # a program with host callbacks cannot be kept across processes
        identity = None
    _programs.precompile(init_program(model, optimizer), *_init_args(input_shape),
                         identity=identity)


def abstract_train_state(model: nn.Module, input_shape: tuple[int, ...],
                         optimizer: optax.GradientTransformation) -> TrainState:
    """The :class:`TrainState` of :func:`create_train_state` as shapes
    (``jax.ShapeDtypeStruct`` leaves), computed without running or compiling anything."""
    return jax.eval_shape(_jitted_fresh_state(model, optimizer), *_init_args(input_shape))


def _init_args(input_shape: tuple[int, ...]) -> tuple[jax.ShapeDtypeStruct, ...]:
    return (jax.ShapeDtypeStruct((2,), jnp.uint32),
            jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
