"""Fixtures shared by the files of ``tests/``."""

from __future__ import annotations

import numpy as np
import pytest

from jaxcnn.data import DeviceDataset


@pytest.fixture(scope="module")
def small_data() -> tuple[DeviceDataset, DeviceDataset]:
    """Synthetic uint8 28x28 images on the device: 700 for training (5 batches of 128 and a
    partial one of 60), 300 for testing."""
    rng = np.random.default_rng(0)
    train_ds = DeviceDataset.from_arrays(rng.integers(0, 256, (700, 28, 28), dtype=np.uint8),
                                         rng.integers(0, 10, 700))
    test_ds = DeviceDataset.from_arrays(rng.integers(0, 256, (300, 28, 28), dtype=np.uint8),
                                        rng.integers(0, 10, 300))
    return train_ds, test_ds
