"""The training state: one pytree with everything a step reads and writes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

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


@functools.lru_cache(maxsize=32)
def _jitted_init(model: nn.Module) -> Callable[..., Any]:
    # One compiled program instead of one per initializer (the same values as eager init).
    return jax.jit(functools.partial(model.init, train=False))


def create_train_state(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...],
                       optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state: ``model.init(init_key, zeros(input_shape), train=False)`` (torch-default
    init from the layers) and ``optimizer.init(params)``; ``key`` is split into the init key
    and the dropout key. ``input_shape`` is NHWC, e.g. ``(1, 28, 28, 1)``."""
    init_key, dropout_key = jax.random.split(key)
    variables = _programs.call(_jitted_init(model), init_key, jnp.zeros(input_shape, jnp.float32))
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=optimizer.init(params),
        dropout_key=dropout_key,
        apply_fn=model.apply,
        tx=optimizer,
    )


def abstract_train_state(model: nn.Module, input_shape: tuple[int, ...],
                         optimizer: optax.GradientTransformation) -> TrainState:
    """The :class:`TrainState` of :func:`create_train_state` as shapes
    (``jax.ShapeDtypeStruct`` leaves), computed without running or compiling anything; starts
    compiling the init program in the background (:func:`~._programs.precompile`)."""
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    init = _jitted_init(model)
    _programs.precompile(init, key, x)
    variables = jax.eval_shape(init, key, x)
    params = variables["params"]
    return TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=jax.eval_shape(optimizer.init, params), dropout_key=key,
                      apply_fn=model.apply, tx=optimizer)
