"""Layer-by-layer parity between torch_ref and jaxcnn: a configuration check, then activations,
BatchNorm statistics and gradients per layer, with :mod:`jaxcnn.testing`'s tolerance.

:func:`parity_report` is the entry point (``jaxcnn parity``); :func:`run_jax` is the jaxcnn side
(every leaf's input and output, optionally the cotangents), :func:`compare_row` judges one layer.
"""

from ._config import ConfigMismatch, compare_configs, jax_layer_config, torch_layer_config
from ._jax import JaxRun, local_vjps, run_jax
from ._report import TIE_NOTE, Diff, LayerRow, ParityReport, compare, explained_by_ties
from ._run import RowContext, compare_row, default_batch, parity_report, pinned_precision

__all__ = [
    "TIE_NOTE",
    "ConfigMismatch",
    "Diff",
    "JaxRun",
    "LayerRow",
    "ParityReport",
    "RowContext",
    "compare",
    "compare_configs",
    "compare_row",
    "default_batch",
    "explained_by_ties",
    "jax_layer_config",
    "local_vjps",
    "parity_report",
    "pinned_precision",
    "run_jax",
    "torch_layer_config",
]
