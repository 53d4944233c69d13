"""One optimizer update as a traceable function, shared by the jitted one-step
(:func:`~jaxcnn.training.train_step`) and many-step (:func:`~jaxcnn.training.train_steps`)
calls."""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ..data import preprocess
from ._state import TrainState, variables_of

#: How often each jitted function was traced (a Python side effect, so it counts compilations).
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def inputs(images: jax.Array, resize: int | None, precision: str) -> jax.Array:
    """Model inputs of uint8 ``(B, 28, 28)`` images: :func:`~jaxcnn.data.preprocess`'s NHWC
    floats, in bfloat16 when ``precision`` says so."""
    x = preprocess(images, resize)
    return x if precision == "float32" else x.astype(precision)


def update(state: TrainState, images: jax.Array, labels: jax.Array, resize: int | None,
           precision: str = "float32") -> tuple[TrainState, dict[str, jax.Array]]:
    """The body of :func:`~jaxcnn.training.train_step` (not jitted: for ``lax.scan`` and the
    like); the arguments and results are train_step's."""
    x = inputs(images, resize, precision)
    dropout_key, step_key = jax.random.split(state.dropout_key)

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        logits, updates = state.apply_fn(
            variables_of(params, state.batch_stats), x, train=True,
            mutable=["batch_stats"], rngs={"dropout": step_key},
        )
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, updates.get("batch_stats", state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, dropout_key=dropout_key)
    metrics = {
        "loss": loss,
        "correct": jnp.sum(jnp.argmax(logits, axis=1) == labels).astype(jnp.int32),
        "count": jnp.asarray(labels.shape[0], jnp.int32),
        "finite": jnp.isfinite(loss) & _all_finite(params),
    }
    return new_state, metrics
