"""Several optimizer updates per call: ``lax.scan`` over batches gathered on the device.

On a GPU a small model's step is shorter than the host's dispatch of it (one launch per XLA
program, plus Python); running ``K`` updates in one compiled program, with the epoch's
indices sent once and every batch gathered from the device-resident dataset inside it,
removes that cost. The updates are :func:`~jaxcnn.training.update`, the same as
:func:`~jaxcnn.training.train_step`'s, in the same order.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
from jax import lax

from ._state import TrainState
from ._step import TRACE_COUNTS, update


@partial(jax.jit, static_argnames=("resize", "precision"), donate_argnums=(0,))
def train_steps(state: TrainState, images: jax.Array, labels: jax.Array, indices: jax.Array,
                *, resize: int | None = None, precision: str = "float32"
                ) -> tuple[TrainState, dict[str, jax.Array]]:
    """``K`` consecutive updates; update ``k`` trains on ``images[indices[k]]``.

    Args:
      state: the :class:`TrainState` (donated: do not reuse the argument).
      images: the whole uint8 dataset ``(N, 28, 28)``; labels: int32 ``(N,)``.
      indices: int32 ``(K, B)``, each row one batch's example indices.
      resize: static output size of the preprocessing, or ``None`` for 28.
      precision: as :func:`~jaxcnn.training.train_step`'s.

    Returns:
      ``(new_state, metrics)``: :func:`~jaxcnn.training.train_step`'s metrics, each stacked
      to ``(K,)`` (step ``k``'s loss, correct count, ...).
    """
    TRACE_COUNTS["train_steps"] += 1
    if indices.ndim != 2:
        raise ValueError(f"indices must be (steps, batch), got shape {tuple(indices.shape)}")

    def body(state: TrainState, idx: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        return update(state, images[idx], labels[idx], resize, precision)

    return lax.scan(body, state, indices)


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
