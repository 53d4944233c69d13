"""Fashion-MNIST for jaxcnn: verified loading, torchvision-exact preprocessing, device batches.

- :func:`load_fashion_mnist` finds (``data_dir``, ``$JAXCNN_DATA``, the user cache, Debian's
  ``/usr/share/datasets/fashion-mnist``) or downloads the four IDX files and verifies them;
  :func:`load_splits` cuts them to ``limit_train``/``limit_test`` (every command's loader).
- :func:`preprocess` turns uint8 ``(N, 28, 28)`` batches into float32 NHWC ``(N, S, S, 1)``,
  bit-identical to torchvision's ``Resize(S)`` (PIL bilinear) + ``ToTensor()``; jit-compatible.
- :class:`DeviceDataset` keeps a split on the device and yields shuffled or sequential batches in
  the order of :func:`epoch_order` (a pure function of seed and epoch).

This package never imports torch.
"""

from ._batching import (
    DeviceDataset,
    batch_slices,
    epoch_order,
    num_batches,
)
from ._idx import DataError
from ._load import (
    CLASSES,
    FashionMNIST,
    default_cache_dir,
    load_fashion_mnist,
    load_splits,
    split_sizes,
)
from ._resize import pil_resize, preprocess

__all__ = [
    "CLASSES",
    "DataError",
    "DeviceDataset",
    "FashionMNIST",
    "batch_slices",
    "default_cache_dir",
    "epoch_order",
    "load_fashion_mnist",
    "load_splits",
    "num_batches",
    "pil_resize",
    "preprocess",
    "split_sizes",
]
