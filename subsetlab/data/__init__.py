"""Data sets: loaders by name, the common split/normalise/augment pipeline, torch adapters.

``load_data(DataConfig(name="digits"), seed)`` returns the :class:`DataSplits` of a run. The
built-in data sets are ``digits`` (scikit-learn, the default), ``fashion_mnist``, ``mnist``,
``cifar10``, ``cifar100`` and ``synthetic``; register your own loader with
:func:`register_dataset`, or bring a torch ``Dataset`` through :func:`from_torch_dataset` and
:func:`make_splits`. Nothing is ever downloaded.
"""

from __future__ import annotations

# Built-in loaders register themselves on import (they import scikit-learn lazily).
from subsetlab.data import cifar, digits, mnist, synthetic  # noqa: F401
from subsetlab.data.augment import AugmentPolicy, RandomCropFlip, default_padding
from subsetlab.data.base import Augment, DataSplits, IndexedDataset
from subsetlab.data.idx import read_idx
from subsetlab.data.pipeline import (
    apply_normalization,
    load_data,
    make_splits,
    normalization_stats,
)
from subsetlab.data.registry import (
    AvailabilityCheck,
    Loader,
    NoOptions,
    RawData,
    check_available,
    get_loader,
    list_datasets,
    parse_options,
    register_dataset,
    unregister_dataset,
)
from subsetlab.data.safe_pickle import SafeUnpickler, safe_load
from subsetlab.data.splits import stratified_sizes, stratified_split
from subsetlab.data.torch_dataset import from_torch_dataset

__all__ = [
    "Augment",
    "AvailabilityCheck",
    "AugmentPolicy",
    "DataSplits",
    "IndexedDataset",
    "Loader",
    "NoOptions",
    "RandomCropFlip",
    "RawData",
    "SafeUnpickler",
    "apply_normalization",
    "check_available",
    "default_padding",
    "from_torch_dataset",
    "get_loader",
    "list_datasets",
    "load_data",
    "make_splits",
    "normalization_stats",
    "parse_options",
    "read_idx",
    "register_dataset",
    "safe_load",
    "stratified_sizes",
    "stratified_split",
    "unregister_dataset",
]
