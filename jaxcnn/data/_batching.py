"""Epoch orders, batch boundaries, and a dataset held on the JAX device."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from ._load import FashionMNIST


def num_batches(n: int, batch_size: int) -> int:
    """Batches per epoch, ``ceil(n / batch_size)``: the last partial batch is kept."""
    if n < 0 or batch_size <= 0:
        raise ValueError(f"need n >= 0 and batch_size > 0, got n={n}, batch_size={batch_size}")
    return -(-n // batch_size)


def batch_slices(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each batch in order; only the last may be shorter."""
    return [
        (start, min(start + batch_size, n))
        for start in range(0, num_batches(n, batch_size) * batch_size, batch_size)
    ]


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training order of epoch ``epoch``: an int64 permutation of ``range(n)``.

    A pure function of ``(seed, epoch, n)``, so a resumed run replays the order of an
    uninterrupted one. It depends only on NumPy's ``SeedSequence`` and ``PCG64`` streams (which
    NumPy keeps stable across versions) and a stable argsort.
    """
    if seed < 0 or epoch < 0 or n < 0:
        raise ValueError(f"need seed, epoch, n >= 0, got {seed}, {epoch}, {n}")
    bits = np.random.PCG64(np.random.SeedSequence([seed, epoch])).random_raw(n)
    return np.argsort(bits, kind="stable").astype(np.int64)


@jax.jit
def _gather(images: jax.Array, labels: jax.Array, index: jax.Array) -> tuple[jax.Array, ...]:
    return jnp.take(images, index, axis=0), jnp.take(labels, index, axis=0)


class DeviceDataset:
    """Images (uint8 ``(N, H, W)``) and labels (int32 ``(N,)``) placed on the default JAX
    device once; :meth:`batches` gathers each batch there."""

    def __init__(self, images: jax.Array, labels: jax.Array) -> None:
        if images.ndim != 3 or images.dtype != jnp.uint8:
            raise ValueError(f"images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
        if labels.shape != images.shape[:1] or labels.dtype != jnp.int32:
            raise ValueError(
                f"labels must be int32 ({images.shape[0]},), got {labels.dtype} {labels.shape}"
            )
        self.images = images
        self.labels = labels

    @classmethod
    def splits(cls, fm: FashionMNIST) -> tuple[DeviceDataset, DeviceDataset]:
        """The train and test splits of ``fm`` (e.g. from :func:`load_splits`) on the device."""
        return (cls.from_arrays(fm.train_images, fm.train_labels),
                cls.from_arrays(fm.test_images, fm.test_labels))

    @classmethod
    def from_arrays(cls, images: np.ndarray | jax.Array, labels: np.ndarray | jax.Array):
        """Copy uint8 images ``(N, H, W)`` and integer labels ``(N,)`` to the device (to every
        device of :mod:`jaxcnn.distributed`'s mesh, replicated, when there is one)."""
        images_np, labels_np = np.asarray(images), np.asarray(labels)
        if images_np.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images_np.dtype}")
        if not np.issubdtype(labels_np.dtype, np.integer):
            raise ValueError(f"labels must be integers, got {labels_np.dtype}")
        from .. import distributed

        if distributed.mesh() is not None:
            images_a, labels_a = distributed.put_replicated(
                (images_np, labels_np.astype(np.int32)))
            return cls(images_a, labels_a)
        return cls(jax.device_put(images_np), jax.device_put(labels_np.astype(np.int32)))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return f"DeviceDataset(n={len(self)}, image_shape={tuple(self.images.shape[1:])})"

    def batches(
        self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0
    ) -> Iterator[tuple[jax.Array, jax.Array]]:
        """One epoch of ``(images uint8 (B, H, W), labels int32 (B,))`` batches.

        Every example appears exactly once, in :func:`epoch_order` ``(seed, epoch)`` order when
        ``shuffle`` else sequentially; the last batch has ``len % batch_size`` examples when that
        is nonzero (one extra shape to compile, reused every epoch).
        """
        n = len(self)
        order = epoch_order(seed, epoch, n) if shuffle else np.arange(n)
        order = order.astype(np.int32)
        for start, stop in batch_slices(n, batch_size):
            yield _gather(self.images, self.labels, order[start:stop])
