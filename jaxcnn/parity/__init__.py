"""Layer-by-layer parity between torch_ref and jaxcnn: a configuration check, then activations,
BatchNorm statistics and gradients per layer, with :mod:`jaxcnn.testing`'s tolerance.

Importing this package does not import torch; :func:`parity_report` needs it (the ``torch``
extra) and says so when it is missing.
"""

from ._config import ConfigMismatch, compare_configs, jax_layer_config, torch_layer_config
from ._report import TIE_NOTE, Diff, LayerRow, ParityReport, compare, explained_by_ties
from ._run import (
    TORCH_MISSING,
    default_batch,
    parity_report,
    pinned_precision,
    require_torch,
)

__all__ = [
    "TIE_NOTE",
    "TORCH_MISSING",
    "ConfigMismatch",
    "Diff",
    "LayerRow",
    "ParityReport",
    "compare",
    "compare_configs",
    "default_batch",
    "explained_by_ties",
    "jax_layer_config",
    "parity_report",
    "pinned_precision",
    "require_torch",
    "torch_layer_config",
]
