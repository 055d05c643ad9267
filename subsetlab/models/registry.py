"""The model registry and :func:`build_model`: seeded construction of a network by name."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from subsetlab.config import FrozenConfig, ModelConfig, validate
from subsetlab.errors import ConfigError, RegistryError
from subsetlab.models.check import check_model
from subsetlab.registry import Registry
from subsetlab.seeding import derive_seed

__all__ = [
    "Builder",
    "ModelInfo",
    "NoModelOptions",
    "build_model",
    "list_models",
    "model_info",
    "register_model",
    "unregister_model",
]

#: A model builder: ``(options, input_shape, num_classes) -> nn.Module``.
Builder = Callable[[Any, tuple[int, ...], int], nn.Module]


class NoModelOptions(FrozenConfig):
    """Options model of an architecture that takes no options (any key is rejected)."""


@dataclass(frozen=True)
class ModelInfo:
    """A registered architecture: its builder and the pydantic model of its options."""

    name: str
    builder: Builder
    options: type[BaseModel]

    @property
    def summary(self) -> str:
        """First line of the builder's docstring."""
        doc = (self.builder.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


_build_lock = threading.Lock()  # build_model reseeds the (restored) global CPU RNG: one at a time
_models: Registry[ModelInfo] = Registry("model", target=lambda i: i.builder)


def register_model(name: str, options: type[BaseModel] = NoModelOptions) -> Callable[[Builder], Builder]:
    """Register a model builder under ``name`` (a decorator).

    The builder is called as ``builder(opts, input_shape, num_classes)`` with ``opts`` the
    validated ``options`` model; it must return an ``nn.Module`` whose last ``nn.Linear``
    produces the logits. Registering the same builder twice is a no-op; another builder under
    a taken name raises.

    Args:
        name: Lower-case name used in ``ModelConfig.name``.
        options: A pydantic model of the architecture's options; make it reject unknown keys
            (subclass :class:`subsetlab.config.FrozenConfig`).

    Returns:
        A decorator that registers the builder and returns it unchanged.

    Raises:
        RegistryError: when the name is invalid or taken
            (:class:`~subsetlab.errors.DuplicateNameError`), or ``options`` is not a pydantic
            model.
    """
    _models.check_name(name)
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        raise RegistryError(
            f"The options of model {name!r} must be a pydantic model class (subclass "
            f"subsetlab.config.FrozenConfig). Got {options!r} instead."
        )

    def deco(fn: Builder) -> Builder:
        if not callable(fn):
            raise RegistryError(f"Cannot register {fn!r} as model {name!r}: it is not callable.")
        _models.add(name, ModelInfo(name, fn, options))
        return fn

    return deco


def unregister_model(name: str) -> None:
    """Remove ``name`` from the model registry (for tests and interactive use)."""
    _models.remove(name)


def list_models() -> list[str]:
    """Sorted names of every registered model."""
    return _models.names()


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` registered under ``name``.

    Raises:
        UnknownNameError: when no model has that name (a ``ConfigError``); the message lists
            the registered names and the closest match.
    """
    return _models.get(name)


def build_model(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build the network ``config.name`` with weights initialised from ``seed``.

    The weights depend only on the config, the shapes and ``seed`` (through
    ``derive_seed(seed, "model")``): the model is built on the CPU under a forked RNG, so the
    global torch RNG state is left as it was and every strategy of a comparison starts from the
    same weights. Builds are serialised by a lock; other threads drawing from the global RNG
    while a model is built would see the temporary seed. The result is checked with
    :func:`check_model`.

    Args:
        config: Architecture name and options.
        input_shape: Shape of one example, e.g. ``(1, 28, 28)`` or ``(64,)``.
        num_classes: Number of output logits.
        seed: Run seed.

    Returns:
        The model, on the CPU, in training mode.

    Raises:
        ConfigError: for an unknown name, a bad option (named in the message), shapes the
            architecture cannot handle, or a builder whose model fails :func:`check_model`.
    """
    info = model_info(config.name)
    opts = validate(info.options, dict(config.options), f"options of model {config.name!r}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(
            f"Model {config.name!r}: input_shape must be a non-empty tuple of positive sizes. "
            f"Got {tuple(input_shape)} instead."
        )
    if int(num_classes) < 1:
        raise ConfigError(f"Model {config.name!r}: num_classes must be >= 1. Got {num_classes} instead.")
    with _build_lock, torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.default_generator.manual_seed(derive_seed(seed, "model"))
        model = info.builder(opts, shape, int(num_classes))
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"The builder of model {config.name!r} returned {type(model).__name__}; it must "
            f"return a torch.nn.Module."
        )
    check_model(model, shape, int(num_classes))
    return model.train()
