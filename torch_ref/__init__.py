"""The PyTorch reference: the book's chapter-5 models, built from jaxcnn's registry.

``torch_ref.create_model(name, **config)`` builds the torch twin of
``jaxcnn.create_model(name, **config)``, with the book's module structure and state-dict names.

- :mod:`.models`: the twins, registered with ``register_torch``;
- :mod:`.optim`: ``torch.optim`` and schedulers from jaxcnn's ``OptimizerConfig``, the book's loop;
- :mod:`.dropout`: :func:`fixed_dropout_masks`; :func:`summary` / :func:`record_calls`: hooks;
- :mod:`.crosscheck`: the cross-framework tools (parity report, compare, bench) and their
  ``jaxcnn`` commands. Not imported here.
"""

from __future__ import annotations

from jaxcnn.registry import list_models

from ._summary import Call, record_calls, summary
from .dropout import fixed_dropout_masks
from .models import (
    AlexNet,
    BatchNorm,
    FlattenLayer,
    GlobalAvgPool2d,
    LeNet,
    Model,
    batch_norm,
    build_model,
    create_model,
)

__all__ = [
    "AlexNet", "BatchNorm", "Call", "FlattenLayer", "GlobalAvgPool2d", "LeNet", "Model",
    "batch_norm", "build_model", "create_model", "fixed_dropout_masks", "list_models",
    "record_calls", "summary",
]
