"""Fixed dropout masks for torch's ``nn.Dropout``: replay jaxcnn's masks in a torch model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def fixed_dropout_masks(model: nn.Module, masks: Mapping[str, Any]) -> Iterator[None]:
    """Within the block, each ``nn.Dropout`` named in ``masks`` uses that mask in training mode:
    ``out = x * mask / (1 - p)``, torch's own formula. ``masks`` maps module names
    (``'fc.2'``) to boolean arrays in torch's layout, e.g. from
    :func:`jaxcnn.convert.dropout_masks_to_torch`. Every named module must be a Dropout, and
    every Dropout that runs in training mode must have a mask."""
    modules = dict(model.named_modules())
    unknown = [k for k in masks if not isinstance(modules.get(k), nn.Dropout)]
    if unknown:
        raise KeyError(f"no Dropout module named {', '.join(unknown)}")
    handles = []

    def hook_for(name: str, p: float):
        mask = torch.as_tensor(np.array(masks[name], dtype=bool))

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
            if not module.training:
                return output
            (x,) = inputs
            m = mask.to(device=x.device, dtype=x.dtype)
            if m.shape != x.shape:
                raise ValueError(f"dropout mask for {name} has shape {tuple(m.shape)}, "
                                 f"input {tuple(x.shape)}")
            return x * (m / (1.0 - p))

        return hook

    for name, module in modules.items():
        if isinstance(module, nn.Dropout):
            if name in masks:
                handles.append(module.register_forward_hook(hook_for(name, module.p)))
            else:
                def missing(module, inputs, output, name=name):
                    if module.training:
                        raise KeyError(f"no dropout mask given for {name}")
                    return output
                handles.append(module.register_forward_hook(missing))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
