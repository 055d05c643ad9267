"""CIFAR-10 and CIFAR-100 from the "python version" pickle batches (never downloaded).

The data root (``DataConfig.root``) may be the batch directory itself or its parent holding
``cifar-10-batches-py/`` or ``cifar-100-python/``. CIFAR-10 reads ``data_batch_1`` ..
``data_batch_5`` and ``test_batch``; CIFAR-100 reads ``train`` and ``test``. The pickles are
read with :func:`subsetlab.data.safe_pickle.safe_load`, which refuses anything but NumPy arrays.
Images become float32 ``[N, 3, 32, 32]`` in ``[0, 1]``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from subsetlab.config import DataConfig, FrozenConfig
from subsetlab.data.augment import AugmentPolicy
from subsetlab.data.base import IndexedDataset
from subsetlab.data.registry import NoOptions, RawData, parse_options, register_dataset
from subsetlab.data.safe_pickle import safe_load
from subsetlab.errors import DataError, MissingDataError

__all__ = ["Cifar100Options", "find_cifar_dir", "load_cifar10", "load_cifar100", "read_cifar_batch"]

_HOW_TO_GET = (
    "Download the python version from https://www.cs.toronto.edu/~kriz/cifar.html "
    "({archive}), extract it, and point DataConfig.root at the extracted {subdir}/ directory "
    "(or its parent); subsetlab never downloads."
)
_CIFAR10_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
_CIFAR100_FILES = ["train", "test"]


class Cifar100Options(FrozenConfig):
    """Options of the ``cifar100`` data set."""

    labels: Literal["fine", "coarse"] = Field(
        "fine", description="Train on the 100 fine classes or the 20 coarse superclasses."
    )


def find_cifar_dir(root: str, subdir: str, files: list[str], name: str, archive: str) -> str:
    """The directory under ``root`` (itself or ``root/subdir``) holding all of ``files``.

    Raises:
        MissingDataError: naming the paths looked at and how to get the data.
    """
    candidates = [root, os.path.join(root, subdir)]
    for d in candidates:
        if all(os.path.isfile(os.path.join(d, f)) for f in files):
            return d
    looked = [os.path.join(d, f) for d in candidates for f in files if not os.path.isfile(os.path.join(d, f))]
    raise MissingDataError(
        f"Dataset {name!r}: the batch files {', '.join(files)} were not all found under data "
        f"root {root!r}. Missing:\n  " + "\n  ".join(looked) + "\n"
        + _HOW_TO_GET.format(archive=archive, subdir=subdir)
    )


def _field(d: Any, key: str, path: str) -> Any:
    if not isinstance(d, dict):
        raise DataError(
            f"CIFAR batch {path!r} holds a {type(d).__name__}, expected a dict with "
            f"'data' and labels; the file is not a CIFAR python batch."
        )
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(
        f"CIFAR batch {path!r} has no {key!r} entry (keys: {sorted(map(str, d))[:8]}); the file "
        f"is not a CIFAR python batch of this data set."
    )


def read_cifar_batch(path: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch: uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``.

    Raises:
        DataError: when the file is not a valid batch (bad pickle, forbidden content, wrong
            shapes or labels out of range).
    """
    d = safe_load(path)
    data = np.asarray(_field(d, "data", path))
    labels = np.asarray(_field(d, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"CIFAR batch {path!r}: 'data' must be uint8 of shape [N, 3072]. Got "
            f"{data.dtype} {data.shape} instead; the file is corrupt."
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"CIFAR batch {path!r}: {label_key!r} must hold {data.shape[0]} integer labels. Got "
            f"{labels.dtype} {labels.shape} instead; the file is corrupt."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"CIFAR batch {path!r}: labels lie in [{labels.min()}, {labels.max()}], expected "
            f"[0, {num_classes}); the file belongs to another data set or is corrupt."
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _to_dataset(parts: list[tuple[np.ndarray, np.ndarray]], num_classes: int, name: str) -> IndexedDataset:
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]).astype(np.float32)).div_(255.0)
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return IndexedDataset(x, y, num_classes, name)


def _names(path: str, key: str) -> list[str] | None:
    if not os.path.isfile(path):
        return None
    try:
        names = _field(safe_load(path), key, path)
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except DataError:
        return None  # the names are a nicety; a bad meta file does not stop training


def _root(config: DataConfig, default: str) -> str:
    return os.path.expanduser(config.root) if config.root else default


def _check_cifar10(config: DataConfig) -> None:
    root = _root(config, "/usr/share/datasets/cifar10")
    find_cifar_dir(root, "cifar-10-batches-py", _CIFAR10_FILES, "cifar10", "cifar-10-python.tar.gz")


def _check_cifar100(config: DataConfig) -> None:
    root = _root(config, "/usr/share/datasets/cifar100")
    find_cifar_dir(root, "cifar-100-python", _CIFAR100_FILES, "cifar100", "cifar-100-python.tar.gz")


@register_dataset("cifar10", check=_check_cifar10)
def load_cifar10(config: DataConfig, seed: int) -> RawData:
    """CIFAR-10: 50,000 training and 10,000 test colour images 32x32 of 10 classes.

    Default root ``/usr/share/datasets/cifar10``. Takes no options; ``seed`` is unused.
    """
    parse_options(NoOptions, config)
    root = _root(config, "/usr/share/datasets/cifar10")
    d = find_cifar_dir(root, "cifar-10-batches-py", _CIFAR10_FILES, "cifar10", "cifar-10-python.tar.gz")
    paths = [os.path.join(d, f) for f in _CIFAR10_FILES]
    parts = [read_cifar_batch(p, "labels", 10) for p in paths]
    return RawData(
        train=_to_dataset(parts[:5], 10, "cifar10-train"),
        test=_to_dataset(parts[5:], 10, "cifar10-test"),
        source_paths=paths,
        augment_policy=AugmentPolicy(padding=4, flip=True),
        class_names=_names(os.path.join(d, "batches.meta"), "label_names"),
    )


@register_dataset("cifar100", check=_check_cifar100)
def load_cifar100(config: DataConfig, seed: int) -> RawData:
    """CIFAR-100: 50,000 training and 10,000 test colour images 32x32 of 100 classes.

    Default root ``/usr/share/datasets/cifar100``. Option ``labels``: ``"fine"`` (100
    classes, default) or ``"coarse"`` (20 superclasses). ``seed`` is unused.
    """
    opts = parse_options(Cifar100Options, config)
    root = _root(config, "/usr/share/datasets/cifar100")
    d = find_cifar_dir(root, "cifar-100-python", _CIFAR100_FILES, "cifar100", "cifar-100-python.tar.gz")
    paths = [os.path.join(d, f) for f in _CIFAR100_FILES]
    k = 100 if opts.labels == "fine" else 20
    parts = [read_cifar_batch(p, f"{opts.labels}_labels", k) for p in paths]
    return RawData(
        train=_to_dataset(parts[:1], k, "cifar100-train"),
        test=_to_dataset(parts[1:], k, "cifar100-test"),
        source_paths=paths,
        augment_policy=AugmentPolicy(padding=4, flip=True),
        class_names=_names(os.path.join(d, "meta"), f"{opts.labels}_label_names"),
        meta={"labels": opts.labels},
    )
