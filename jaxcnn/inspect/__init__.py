"""Inspect a jaxcnn model as torch would show it: ``print(model)``-style reprs, per-layer
shape summaries, and surgery on the module tree (torch names throughout). Never imports torch.
"""

from ._repr import get_module, replace_module, torch_style_repr, torch_type
from ._summary import (
    Summary,
    SummaryRow,
    count_params,
    intercept_calls,
    summary,
    to_layout,
)

__all__ = [
    "Summary",
    "SummaryRow",
    "count_params",
    "get_module",
    "intercept_calls",
    "replace_module",
    "summary",
    "to_layout",
    "torch_style_repr",
    "torch_type",
]
