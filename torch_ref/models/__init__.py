"""The book's torch models, each registered under its jaxcnn name where it is defined."""

from ._registry import TORCH_BUILDERS, build_model, create_model, register_torch
from .d2l_ch5 import (
    AlexNet,
    BatchNorm,
    FlattenLayer,
    GlobalAvgPool2d,
    LeNet,
    batch_norm,
    lenet_bn,
    nin,
    nin_block,
    vgg,
    vgg11,
    vgg_block,
)
from .seed_example import Model

__all__ = [
    "TORCH_BUILDERS", "AlexNet", "BatchNorm", "FlattenLayer", "GlobalAvgPool2d", "LeNet", "Model",
    "batch_norm", "build_model", "create_model", "lenet_bn", "nin", "nin_block",
    "register_torch", "vgg", "vgg11", "vgg_block",
]
