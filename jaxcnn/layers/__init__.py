"""Flax layers with PyTorch semantics; inputs are NHWC (channels last).

Each layer mirrors the torch module of the same name: its hyper-parameters, padding and
output size, default initialisation and, through :class:`TorchVar`, the names and layouts of
its variables in a torch state dict.
"""

from ._base import Layer, ShapeError, TorchVar, torch_uniform
from ._linear import Conv2d, Linear
from ._misc import Dropout, FlattenLayer, ReLU, Sigmoid, flatten_torch_order
from ._modulelist import ModuleList, module_list
from ._norm import BatchNorm, BatchNorm1d, BatchNorm2d
from ._pooling import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    GlobalAvgPool2d,
    MaxPool2d,
    adaptive_bins,
    pool_output_size,
)
from ._sequential import Sequential, named_sequential, sequential

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv2d",
    "Dropout",
    "FlattenLayer",
    "GlobalAvgPool2d",
    "Layer",
    "Linear",
    "MaxPool2d",
    "ModuleList",
    "ReLU",
    "Sequential",
    "ShapeError",
    "Sigmoid",
    "TorchVar",
    "adaptive_bins",
    "flatten_torch_order",
    "module_list",
    "named_sequential",
    "pool_output_size",
    "sequential",
    "torch_uniform",
]
