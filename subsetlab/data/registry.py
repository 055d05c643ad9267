"""The dataset registry: loaders registered by name, and the record a loader returns.

A loader is a function ``(config: DataConfig, seed: int) -> RawData``. It reads the files (or
builds the data), validates ``config.options`` and returns the train and test sets; the common
pipeline in :mod:`subsetlab.data.pipeline` then subsamples, splits, normalises and attaches the
augmentation, the same way for every data set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from subsetlab.config import DataConfig, FrozenConfig, validate
from subsetlab.data.augment import AugmentPolicy
from subsetlab.data.base import IndexedDataset
from subsetlab.errors import RegistryError
from subsetlab.registry import Registry

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

@dataclass(frozen=True)
class _Dataset:
    """A registered loader and its optional availability check."""

    loader: Loader
    check: AvailabilityCheck | None = None


_datasets: Registry[_Dataset] = Registry("dataset", target=lambda d: d.loader)


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
        RegistryError: when the name is invalid or already taken by another loader
            (:class:`~subsetlab.errors.DuplicateNameError`).

    Example:
        >>> @register_dataset("my_blobs")                          # doctest: +SKIP
        ... def load_my_blobs(config: DataConfig, seed: int) -> RawData: ...
    """
    _datasets.check_name(name)

    def deco(fn: Loader) -> Loader:
        if not callable(fn):
            raise RegistryError(f"Cannot register {fn!r} as dataset {name!r}: it is not callable.")
        with _datasets.lock:
            old = _datasets.find(name)
            keep = old.check if old is not None and old.loader is fn else None
            _datasets.add(name, _Dataset(fn, check if check is not None else keep))
        return fn

    return deco


def unregister_dataset(name: str) -> None:
    """Remove ``name`` from the dataset registry (for tests and interactive use)."""
    _datasets.remove(name)


def get_loader(name: str) -> Loader:
    """The loader registered under ``name``.

    Raises:
        UnknownNameError: when no dataset has that name (a ``ConfigError``); the message lists
            the registered names and the closest match.
    """
    return _datasets.get(name).loader


def list_datasets() -> list[str]:
    """Sorted names of every registered dataset."""
    return _datasets.names()


def check_available(config: DataConfig) -> None:
    """Check, without loading it, that the data set of ``config`` can be loaded: its name is
    registered and, for a data set read from files, the files are where they will be looked
    for.

    Raises:
        UnknownNameError: no dataset has that name (a ``ConfigError``; the message lists the
            registered ones).
        MissingDataError: its files are missing; the message gives the full paths looked at
            and how to get the files.
    """
    check = _datasets.get(config.name).check
    if check is not None:
        check(config)


class NoOptions(FrozenConfig):
    """Options model of a data set that takes no options (any key is rejected)."""


def parse_options(cls: type[OptionsT], config: DataConfig) -> OptionsT:
    """Validate ``config.options`` against the pydantic model ``cls`` of a dataset's options.

    Raises:
        ConfigError: naming the offending option, its value and the fix.
    """
    return validate(cls, dict(config.options), f"options of dataset {config.name!r}")

