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
from .densenet import DenseBlock, conv_block, densenet, transition_block
from .googlenet import Inception, googlenet
from .resnet import Residual, resnet18, resnet_block
from .seed_example import Model

__all__ = [
    "TORCH_BUILDERS",
    "AlexNet",
    "BatchNorm",
    "DenseBlock",
    "FlattenLayer",
    "GlobalAvgPool2d",
    "Inception",
    "LeNet",
    "Model",
    "Residual",
    "batch_norm",
    "build_model",
    "conv_block",
    "create_model",
    "densenet",
    "googlenet",
    "lenet_bn",
    "nin",
    "nin_block",
    "register_torch",
    "resnet18",
    "resnet_block",
    "transition_block",
    "vgg",
    "vgg11",
    "vgg_block",
]
