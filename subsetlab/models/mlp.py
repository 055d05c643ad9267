"""Fully connected models: ``linear`` (one layer) and ``mlp`` (ReLU hidden layers)."""

from __future__ import annotations

import math

from pydantic import Field, PositiveInt
from torch import nn

from subsetlab.config import FrozenConfig
from subsetlab.models.registry import NoModelOptions, register_model

__all__ = ["MLP", "MLPOptions", "build_linear", "build_mlp"]


class MLPOptions(FrozenConfig):
    """Options of the ``mlp`` model."""

    hidden: tuple[PositiveInt, ...] = Field(
        (256, 128), description="Widths of the hidden layers (empty: a linear model)."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability after each hidden ReLU.")


class MLP(nn.Sequential):
    """Flatten, then ``Linear -> ReLU (-> Dropout)`` per hidden width, then the output ``Linear``.

    Args:
        in_features: Number of input features (the product of the example shape).
        num_classes: Number of output logits.
        hidden: Hidden layer widths.
        dropout: Dropout probability after each hidden ReLU (0 adds no dropout layer).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: tuple[int, ...] = (256, 128),
        dropout: float = 0.0,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


@register_model("linear")
def build_linear(opts: NoModelOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Flatten and one ``nn.Linear``: multinomial logistic regression (handy for tests)."""
    return MLP(math.prod(input_shape), num_classes, hidden=())


@register_model("mlp", options=MLPOptions)
def build_mlp(opts: MLPOptions, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multi-layer perceptron; options ``hidden`` (default ``[256, 128]``) and ``dropout``."""
    return MLP(math.prod(input_shape), num_classes, tuple(opts.hidden), opts.dropout)
