"""Networks by name, built with seeded weights; their last module is an ``nn.Linear``.

``build_model(ModelConfig(name="cnn"), input_shape, num_classes, seed)`` builds one of the
registered architectures: ``linear``, ``mlp``, ``cnn``, ``lenet``, ``resnet20``, ``resnet18``. Register
your own with :func:`register_model`, or pass any ``nn.Module`` through the Python API after
checking it with :func:`check_model`.
"""

from __future__ import annotations

from subsetlab.models.check import check_model
from subsetlab.models.cnn import CNNOptions, SmallCNN
from subsetlab.models.lenet import LeNet, LeNetOptions
from subsetlab.models.mlp import MLP, MLPOptions
from subsetlab.models.registry import (
    Builder,
    ModelInfo,
    NoModelOptions,
    build_model,
    list_models,
    model_info,
    register_model,
    unregister_model,
)
from subsetlab.models.resnet import BasicBlock, CifarResNet, ResNetOptions

__all__ = [
    "MLP",
    "BasicBlock",
    "Builder",
    "CNNOptions",
    "CifarResNet",
    "LeNet",
    "LeNetOptions",
    "MLPOptions",
    "ModelInfo",
    "NoModelOptions",
    "ResNetOptions",
    "SmallCNN",
    "build_model",
    "check_model",
    "list_models",
    "model_info",
    "register_model",
    "unregister_model",
]
