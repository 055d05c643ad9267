"""The dataset registry: loaders registered by name, and the record a loader returns.

A loader is a function ``(config: DataConfig, seed: int) -> RawData``. It reads the files (or
builds the data), validates ``config.options`` and returns the train and test sets; the common
pipeline in :mod:`subsetlab.data.pipeline` then subsamples, splits, normalises and attaches the
augmentation, the same way for every data set.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from subsetlab.config import DataConfig, FrozenConfig, validate
from subsetlab.data.augment import AugmentPolicy
from subsetlab.data.base import IndexedDataset
from subsetlab.errors import ConfigError, RegistryError, unknown_name_message

__all__ = [
    "AvailabilityCheck",
    "Loader",
    "NoOptions",
    "RawData",
    "check_available",
    "get_loader",
    "list_datasets",
    "parse_options",
    "register_dataset",
    "unregister_dataset",
]

OptionsT = TypeVar("OptionsT", bound=BaseModel)


@dataclass
class RawData:
    """What a dataset loader returns: the train and test sets before the common pipeline.

    Attributes:
        train: The full training set (before any ``n_train`` subsample or validation split).
        test: The test set.
        source_paths: Files or directories the data came from (recorded in the split's meta).
        augment_policy: How ``augment=True`` crops and flips this data; None when the data
            set defines no augmentation (then ``augment=True`` is a configuration error).
        class_names: Optional human-readable class names, in label order.
        meta: Further loader-specific facts recorded in the split's meta.
    """

    train: IndexedDataset
    test: IndexedDataset
    source_paths: list[str] = field(default_factory=list)
    augment_policy: AugmentPolicy | None = None
    class_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


#: A dataset loader: ``(config, seed) -> RawData``.
Loader = Callable[[DataConfig, int], RawData]
#: A cheap availability check of a data set: ``(config) -> None``, raising
#: :class:`~subsetlab.errors.MissingDataError` when files are missing (without reading them).
AvailabilityCheck = Callable[[DataConfig], None]

_lock = threading.RLock()
_registry: dict[str, Loader] = {}
_checks: dict[str, AvailabilityCheck] = {}
_NAME = re.compile(r"[a-z][a-z0-9_\-]*")


def register_dataset(name: str, *, check: AvailabilityCheck | None = None) -> Callable[[Loader], Loader]:
    """Register a loader function under ``name`` (a decorator).

    Registering the same function twice is a no-op; another function under a taken name
    raises.

    Args:
        name: Lower-case name used in ``DataConfig.name`` (letters, digits, ``-``, ``_``).
        check: Optional cheap availability check ``(config) -> None`` that raises
            :class:`~subsetlab.errors.MissingDataError` (naming the paths and how to get the
            files) when the data is not there, without loading it; a suite runs it for every
            data set before its first run (:func:`check_available`).

    Returns:
        A decorator that registers the loader and returns it unchanged.

    Raises:
        RegistryError: when the name is invalid or already taken by another loader.

    Example:
        >>> @register_dataset("my_blobs")                          # doctest: +SKIP
        ... def load_my_blobs(config: DataConfig, seed: int) -> RawData: ...
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistryError(
            f"Dataset name {name!r} is invalid: use lower-case letters, digits, '-' and '_', "
            f"starting with a letter."
        )

    def deco(fn: Loader) -> Loader:
        if not callable(fn):
            raise RegistryError(f"Cannot register {fn!r} as dataset {name!r}: it is not callable.")
        with _lock:
            old = _registry.get(name)
            if old is not None and old is not fn:
                raise RegistryError(
                    f"A dataset named {name!r} is already registered ({_qualname(old)}); cannot "
                    f"register {_qualname(fn)} under the same name. Rename one of them."
                )
            _registry[name] = fn
            if check is not None:
                _checks[name] = check
        return fn

    return deco


def unregister_dataset(name: str) -> None:
    """Remove ``name`` from the dataset registry (for tests and interactive use)."""
    with _lock:
        _registry.pop(name, None)
        _checks.pop(name, None)


def check_available(config: DataConfig) -> None:
    """Check, without loading it, that the data set of ``config`` can be loaded: its name is
    registered and, for a data set read from files, the files are where they will be looked
    for.

    Raises:
        ConfigError: no dataset has that name (the message lists the registered ones).
        MissingDataError: its files are missing; the message gives the full paths looked at
            and how to get the files.
    """
    get_loader(config.name)
    with _lock:
        check = _checks.get(config.name)
    if check is not None:
        check(config)


def list_datasets() -> list[str]:
    """Sorted names of every registered dataset."""
    with _lock:
        return sorted(_registry)


def get_loader(name: str) -> Loader:
    """The loader registered under ``name``.

    Raises:
        ConfigError: when no dataset has that name; the message lists the registered names and
            the closest match.
    """
    with _lock:
        fn = _registry.get(name)
        known = sorted(_registry)
    if fn is None:
        raise ConfigError(unknown_name_message("dataset", name, known))
    return fn


class NoOptions(FrozenConfig):
    """Options model of a data set that takes no options (any key is rejected)."""


def parse_options(cls: type[OptionsT], config: DataConfig) -> OptionsT:
    """Validate ``config.options`` against the pydantic model ``cls`` of a dataset's options.

    Raises:
        ConfigError: naming the offending option, its value and the fix.
    """
    return validate(cls, dict(config.options), f"options of dataset {config.name!r}")


def _qualname(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
