"""Flax layers with PyTorch semantics; inputs are NHWC (channels last).

Each layer mirrors the torch module of the same name: its hyper-parameters, padding and
output size, default initialisation and, through :class:`TorchVar`, the names and layouts of
its variables in a torch state dict. The numerical kernels (convolution, pooling, batch
normalisation) are in :mod:`jaxcnn.ops`.
"""

from .activation import ReLU, Sigmoid
from .base import Layer, ShapeError, TorchVar, torch_uniform
from .containers import ModuleList, Sequential, module_list, named_sequential, sequential
from .conv import Conv2d
from .dropout import Dropout
from .flatten import FlattenLayer, flatten_torch_order
from .linear import Linear
from .norm import BatchNorm, BatchNorm1d, BatchNorm2d
from .pool import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    GlobalAvgPool2d,
    MaxPool2d,
    adaptive_bins,
    pool_output_size,
)

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
