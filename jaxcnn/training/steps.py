"""The jitted steps: :func:`train_step` (one optimizer update per call), :func:`train_scan`
(K updates per call, ``lax.scan`` over batches gathered on the device) and :func:`eval_step`;
both training steps run the same traceable :func:`update`.

On a GPU a small model's step is shorter than the host's dispatch of it (one launch per XLA
program, plus Python); :func:`train_scan` runs ``K`` updates in one compiled program, with the
epoch's indices sent once and every batch gathered from the device-resident dataset inside it.
Batches are uint8 images ``(B, 28, 28)`` and int32 labels ``(B,)``; the steps preprocess them
(:func:`jaxcnn.data.preprocess`) inside the compiled function.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from ..data import preprocess
from ..ops.norm import example_weights
from ._state import TrainState, variables_of

#: :func:`all_finite` checks the floating-point leaves of at most this many elements together,
#: as one concatenated vector, and larger leaves one by one (copying those would cost more than
#: their own reductions).
FINITE_GROUP_LIMIT = 2**16


def all_finite(tree: Any) -> jax.Array:
    """A scalar bool: every element of every leaf of ``tree`` is finite (integer leaves always
    are).

    The small leaves (:data:`FINITE_GROUP_LIMIT`) are concatenated and checked by one
    reduction: in a compiled training step one or two kernels instead of one or two per leaf
    (LeNet-BN's parameters, BatchNorm statistics and Adam state have 62 floating-point leaves;
    its training program had 372 fusions with a check per leaf, 258 with this one, and
    compiled about 0.5 s faster on a 2-core CPU). The result is the same: a conversion to the
    leaves' common floating-point type keeps every NaN and infinity, and no finite value of a
    narrower type overflows in a wider one.
    """
    floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    small = [jnp.ravel(x) for x in floats if x.size <= FINITE_GROUP_LIMIT]
    checks = [jnp.all(jnp.isfinite(x)) for x in floats if x.size > FINITE_GROUP_LIMIT]
    if small:
        common = jnp.result_type(*small)
        checks.append(jnp.all(jnp.isfinite(jnp.concatenate([x.astype(common) for x in small]))))
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def inputs(images: jax.Array, resize: int | None, precision: str) -> jax.Array:
    """Model inputs of uint8 ``(B, 28, 28)`` images: :func:`~jaxcnn.data.preprocess`'s NHWC
    floats, in bfloat16 when ``precision`` says so."""
    x = preprocess(images, resize)
    return x if precision == "float32" else x.astype(precision)


def update(state: TrainState, images: jax.Array, labels: jax.Array, resize: int | None,
           precision: str = "float32", weights: jax.Array | None = None
           ) -> tuple[TrainState, dict[str, jax.Array]]:
    """The body of :func:`train_step` (not jitted: for ``lax.scan`` and the like); the
    arguments and results are train_step's.

    ``weights`` (float ``(B,)``: 1 for a real example, 0 for padding) trains on the real
    examples of a padded batch only: the loss is their mean, the BatchNorm statistics are
    theirs (:func:`jaxcnn.ops.norm.example_weights`), the metrics count them, and padding
    gets no gradient; with all weights 1 it is the plain update."""
    x = inputs(images, resize, precision)
    dropout_key, step_key = jax.random.split(state.dropout_key)

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        with example_weights(weights):
            logits, updates = state.apply_fn(
                variables_of(params, state.batch_stats), x, train=True,
                mutable=["batch_stats"], rngs={"dropout": step_key},
            )
        logits = logits.astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        if weights is None:
            loss = losses.mean()
        else:
            w = weights.astype(losses.dtype)  # times 1 / count, as XLA computes the mean
            loss = jnp.sum(losses * w) * (1.0 / jnp.sum(w))
        return loss, (logits, updates.get("batch_stats", state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, dropout_key=dropout_key)
    hits = jnp.argmax(logits, axis=1) == labels
    if weights is None:
        correct, count = hits, jnp.asarray(labels.shape[0], jnp.int32)
    else:
        real = weights > 0
        correct, count = hits & real, jnp.sum(real, dtype=jnp.int32)
    metrics = {
        "loss": loss,
        "correct": jnp.sum(correct).astype(jnp.int32),
        "count": count,
        # everything a checkpoint saves: parameters, BatchNorm statistics, optimizer state
        "finite": jnp.isfinite(loss) & all_finite((params, batch_stats, opt_state)),
    }
    return new_state, metrics


@partial(jax.jit, static_argnames=("resize", "precision"), donate_argnums=(0,))
def train_step(state: TrainState, images: jax.Array, labels: jax.Array, *,
               resize: int | None = None, precision: str = "float32"
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on a batch (train mode: BN batch statistics, dropout).

    Args:
      state: the :class:`TrainState` (donated: do not reuse the argument).
      images: uint8 ``(B, 28, 28)``; labels: int ``(B,)``.
      resize: static output size of the preprocessing, or ``None`` for 28.
      precision: ``'float32'``, or ``'bfloat16'``: the model computes in bfloat16 (its layers
        cast their float32 parameters to the input's dtype; BatchNorm normalises in float32),
        the logits are cast back to float32 for the loss; gradients, parameters and optimizer
        state stay float32.

    Returns:
      ``(new_state, metrics)``; metrics: ``loss`` (mean cross-entropy, float32), ``correct``
      (int32, ``argmax(logits, 1) == y``), ``count`` (B) and ``finite`` (the loss and the whole
      new state that a checkpoint saves, parameters, BatchNorm statistics and optimizer state,
      are all finite).
    """
    return update(state, images, labels, resize, precision)


@partial(jax.jit, static_argnames=("apply_fn", "resize", "precision"))
def count_correct(apply_fn: Callable[..., Any], variables: Any, images: jax.Array,
                  labels: jax.Array, resize: int | None, precision: str = "float32"
                  ) -> jax.Array:
    """Correct predictions (int32 scalar) of ``apply_fn`` on a uint8 ``(B, 28, 28)`` batch in
    eval mode; jitted with the model's ``apply`` static (one compilation per shape)."""
    logits = apply_fn(variables, inputs(images, resize, precision), train=False)
    return jnp.sum(jnp.argmax(logits, axis=1) == labels).astype(jnp.int32)


@partial(jax.jit, static_argnames=("apply_fn", "resize", "precision"))
def count_correct_scan(variables: Any, images: jax.Array, labels: jax.Array,
                       indices: jax.Array, valid: jax.Array, *,
                       apply_fn: Callable[..., Any], resize: int | None = None,
                       precision: str = "float32") -> jax.Array:
    """Correct predictions (int32 scalar) over a whole dataset in one call: ``lax.scan`` over
    index blocks ``indices`` int32 ``(K, B)`` into the uint8 ``images`` ``(N, 28, 28)``, counting
    only where ``valid`` (bool ``(K, B)``) is set, so that the last block can be padded (eval
    mode has no batch statistics: padding changes no other prediction)."""

    def body(total: jax.Array, block: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        idx, ok = block
        return total + _masked_correct(apply_fn, variables, images[idx], labels[idx], ok,
                                       resize, precision), None

    total, _ = lax.scan(body, jnp.zeros((), jnp.int32), (indices, valid))
    return total


def _masked_correct(apply_fn: Callable[..., Any], variables: Any, images: jax.Array,
                    labels: jax.Array, valid: jax.Array, resize: int | None, precision: str
                    ) -> jax.Array:
    """Correct eval-mode predictions (int32 scalar) on a uint8 ``(B, 28, 28)`` batch, counted
    where ``valid`` (bool ``(B,)``) is set: the body of the one-call test passes."""
    logits = apply_fn(variables, inputs(images, resize, precision), train=False)
    return jnp.sum((jnp.argmax(logits, axis=1) == labels) & valid, dtype=jnp.int32)


def eval_step(state: TrainState, images: jax.Array, labels: jax.Array, *,
              resize: int | None = None, precision: str = "float32") -> jax.Array:
    """The number of correct predictions (int32) on a batch, in eval mode (``train=False``)."""
    return count_correct(state.apply_fn, state.variables, images, labels, resize, precision)


@partial(jax.jit, static_argnames=("resize", "precision"), donate_argnums=(0,))
def train_scan(state: TrainState, images: jax.Array, labels: jax.Array, indices: jax.Array,
               weights: jax.Array | None = None, *, resize: int | None = None,
               precision: str = "float32") -> tuple[TrainState, dict[str, jax.Array]]:
    """``K`` consecutive updates; update ``k`` trains on ``images[indices[k]]``.

    Args:
      state: the :class:`TrainState` (donated: do not reuse the argument).
      images: the whole uint8 dataset ``(N, 28, 28)``; labels: int32 ``(N,)``.
      indices: int32 ``(K, B)``, each row one batch's example indices.
      weights: optional float32 ``(K, B)``: 1 for a real example, 0 for padding (a partial
        batch filled up to ``B``, e.g. the epoch's last one, :func:`epoch_blocks`); each
        update then trains on its real examples only (:func:`update`).
      resize: static output size of the preprocessing, or ``None`` for 28.
      precision: as :func:`~jaxcnn.training.train_step`'s.

    Returns:
      ``(new_state, metrics)``: :func:`~jaxcnn.training.train_step`'s metrics, each stacked
      to ``(K,)`` (step ``k``'s loss, correct count, ...).
    """
    if indices.ndim != 2:
        raise ValueError(f"indices must be (steps, batch), got shape {tuple(indices.shape)}")
    if weights is not None and weights.shape != indices.shape:
        raise ValueError(f"weights must have the shape of indices {tuple(indices.shape)}, got "
                         f"{tuple(weights.shape)}")

    def body(state: TrainState, block: tuple[jax.Array, jax.Array | None]
             ) -> tuple[TrainState, dict[str, jax.Array]]:
        idx, w = block
        return update(state, images[idx], labels[idx], resize, precision, w)

    return lax.scan(body, state, (indices, weights))


@partial(jax.jit, static_argnames=("resize", "precision"), donate_argnums=(0,))
def train_blocks(state: TrainState, images: jax.Array, labels: jax.Array, *,
                 resize: int | None = None, precision: str = "float32"
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
    """:func:`train_scan` on batches gathered already: uint8 ``images`` ``(K, B, 28, 28)``,
    int32 ``labels`` ``(K, B)``; update ``k`` trains on ``images[k]`` (the multi-process path,
    where each process reads its own rows, :func:`jaxcnn.distributed.put_local_blocks`).
    Returns train_scan's ``(new_state, metrics)``."""

    def body(state: TrainState, batch: tuple[jax.Array, jax.Array]
             ) -> tuple[TrainState, dict[str, jax.Array]]:
        return update(state, *batch, resize, precision)

    return lax.scan(body, state, (images, labels))


@partial(jax.jit, static_argnames=("apply_fn", "resize", "precision"))
def count_correct_blocks(variables: Any, images: jax.Array, labels: jax.Array, valid: jax.Array,
                         *, apply_fn: Callable[..., Any], resize: int | None = None,
                         precision: str = "float32") -> jax.Array:
    """:func:`count_correct_scan` on gathered blocks: ``images`` uint8 ``(K, B, 28, 28)``,
    ``labels``/``valid`` ``(K, B)``; int32 scalar."""

    def body(total: jax.Array, block: tuple[jax.Array, ...]) -> tuple[jax.Array, None]:
        return total + _masked_correct(apply_fn, variables, *block, resize, precision), None

    total, _ = lax.scan(body, jnp.zeros((), jnp.int32), (images, labels, valid))
    return total


def auto_steps_per_call(batches: int, target: int = 64) -> int:
    """How many updates :func:`train_scan` runs per call by default, for an epoch of
    ``batches`` scanned batches (the partial last one included when it is padded into a call,
    :func:`epoch_blocks`): all of them when there are at most ``target``, else the largest
    divisor of their number that is at most ``target`` (so every call has the same shape: one
    program), or ``target`` when the only such divisors are small (then the epoch's last call
    needs a second program)."""
    if batches <= target:
        return max(batches, 1)
    best = max(d for d in range(1, target + 1) if batches % d == 0)
    return best if best >= target // 4 else target


def epoch_blocks(order: np.ndarray, batch_size: int, steps_per_call: int
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """An epoch's batches of ``order`` as :func:`train_scan` arguments: ``(indices, weights)``
    blocks of at most ``steps_per_call`` batches, int32 and float32 ``(K, B)``. A trailing
    partial batch is filled up to ``batch_size`` with index 0 at weight 0, so that it needs no
    program of its own: ``ceil(len(order) / batch_size)`` updates in all, the same ones (to
    float rounding) as unpadded batches. A trailing single example stays a ``(1, 1)`` block of
    its own (a BatchNorm cannot train on it: the layer's error names it, as torch's does)."""
    if batch_size < 1 or steps_per_call < 1:
        raise ValueError(f"batch_size and steps_per_call must be >= 1, got {batch_size}, "
                         f"{steps_per_call}")
    single = len(order) % batch_size == 1 and batch_size > 1
    padded = order[:-1] if single else order
    steps = -(-len(padded) // batch_size)
    idx = np.zeros(steps * batch_size, np.int32)
    idx[:len(padded)] = padded
    weights = np.zeros(steps * batch_size, np.float32)
    weights[:len(padded)] = 1.0
    idx, weights = idx.reshape(steps, batch_size), weights.reshape(steps, batch_size)
    blocks = [(idx[i:i + steps_per_call], weights[i:i + steps_per_call])
              for i in range(0, steps, steps_per_call)]
    if single:
        blocks.append((np.asarray(order[-1:], np.int32).reshape(1, 1),
                       np.ones((1, 1), np.float32)))
    return blocks


def chunk_indices(order: np.ndarray, batch_size: int, steps_per_call: int
                  ) -> list[np.ndarray]:
    """The full batches of an epoch's ``order`` as ``(K, B)`` int32 blocks of at most
    ``steps_per_call`` batches (the last block may have fewer). A trailing partial batch
    (``len(order) % batch_size`` examples) is not included."""
    if batch_size < 1 or steps_per_call < 1:
        raise ValueError(f"batch_size and steps_per_call must be >= 1, got {batch_size}, "
                         f"{steps_per_call}")
    full = len(order) // batch_size
    batches = np.asarray(order[:full * batch_size], np.int32).reshape(full, batch_size)
    return [batches[i:i + steps_per_call] for i in range(0, full, steps_per_call)]
