"""Layout helpers: torch arrays are NCHW, jaxcnn models take NHWC."""

from __future__ import annotations

from typing import Any

import numpy as np


def nchw_to_nhwc(x: Any) -> Any:
    """``(N, C, H, W) -> (N, H, W, C)`` for numpy or JAX arrays (torch tensors become numpy)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    if x.ndim != 4:
        raise ValueError(f"nchw_to_nhwc expects a 4-D array, got shape {tuple(x.shape)}")
    return x.transpose(0, 2, 3, 1) if hasattr(x, "transpose") else np.transpose(x, (0, 2, 3, 1))


def nhwc_to_nchw(x: Any) -> Any:
    """``(N, H, W, C) -> (N, C, H, W)`` for numpy or JAX arrays."""
    if x.ndim != 4:
        raise ValueError(f"nhwc_to_nchw expects a 4-D array, got shape {tuple(x.shape)}")
    return x.transpose(0, 3, 1, 2)
