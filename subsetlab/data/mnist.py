"""MNIST and Fashion-MNIST from their four IDX files (never downloaded).

Files looked for in the data root (``DataConfig.root`` or the default below), in the root's
``raw/`` folder and in torchvision's ``<Name>/raw/`` layout, each plain or with ``.gz``:
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``. Images become float32 ``[N, 1, 28, 28]`` in ``[0, 1]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from subsetlab.config import DataConfig
from subsetlab.data.augment import AugmentPolicy
from subsetlab.data.base import IndexedDataset
from subsetlab.data.idx import read_idx
from subsetlab.data.registry import NoOptions, RawData, parse_options, register_dataset
from subsetlab.errors import DataError, MissingDataError

__all__ = ["FASHION_MNIST", "IDX_FILES", "MNIST", "IdxSource", "find_idx_files", "load_idx_dataset"]

#: The four files of an MNIST-type data set, by role.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class IdxSource:
    """Where an MNIST-type data set lives by default and how to obtain it."""

    name: str
    default_root: str
    torchvision_dir: str
    how_to_get: str
    class_names: tuple[str, ...]


FASHION_MNIST = IdxSource(
    name="fashion_mnist",
    default_root="/usr/share/datasets/fashion-mnist",
    torchvision_dir="FashionMNIST",
    how_to_get=(
        "On Debian/Ubuntu install them with `apt-get install dataset-fashion-mnist` (files go to "
        "/usr/share/datasets/fashion-mnist), or download the four .gz files from "
        "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion) into a "
        "directory and set the data root to it."
    ),
    class_names=(
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
)

MNIST = IdxSource(
    name="mnist",
    default_root="/usr/share/datasets/mnist",
    torchvision_dir="MNIST",
    how_to_get=(
        "Download the four .gz files from https://ossci-datasets.s3.amazonaws.com/mnist/ (a "
        "mirror of http://yann.lecun.com/exdb/mnist/) into a directory and set the data root "
        "to it; subsetlab never downloads."
    ),
    class_names=tuple(str(i) for i in range(10)),
)


def _candidate_dirs(root: str, source: IdxSource) -> list[str]:
    return [root, os.path.join(root, "raw"), os.path.join(root, source.torchvision_dir, "raw")]


def find_idx_files(root: str, source: IdxSource) -> dict[str, str]:
    """Locate the four IDX files of ``source`` under ``root``.

    Returns:
        ``{role: path}`` for the roles of :data:`IDX_FILES`.

    Raises:
        MissingDataError: naming every path looked at and how to get the files.
    """
    found: dict[str, str] = {}
    looked: list[str] = []
    for role, base in IDX_FILES.items():
        for d in _candidate_dirs(root, source):
            for fname in (base, base + ".gz"):
                path = os.path.join(d, fname)
                if os.path.isfile(path):
                    found[role] = path
                    break
                looked.append(path)
            if role in found:
                break
    missing = [IDX_FILES[r] for r in IDX_FILES if r not in found]
    if missing:
        shown = "\n  ".join(p for p in looked if any(os.path.basename(p).startswith(m) for m in missing))
        raise MissingDataError(
            f"Dataset {source.name!r}: missing file(s) {', '.join(missing)} (plain or .gz) under "
            f"data root {root!r}. Looked at:\n  {shown}\n{source.how_to_get} "
            f"Point DataConfig.root at the directory holding them."
        )
    return found


def _labels(arr: np.ndarray, path: str, n: int) -> torch.Tensor:
    if arr.shape[0] != n:
        raise DataError(
            f"Label file {path!r} holds {arr.shape[0]} labels but its image file holds {n} "
            f"images; the files do not belong together."
        )
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 9):
        raise DataError(
            f"Label file {path!r} has labels in [{int(arr.min())}, {int(arr.max())}], expected "
            f"0..9; the file is corrupt."
        )
    return torch.from_numpy(arr.astype(np.int64))


def _images(arr: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(arr.astype(np.float32))
    x.div_(255.0 if arr.dtype == np.uint8 else 1.0)
    return x.unsqueeze(1)


def load_idx_dataset(root: str, source: IdxSource) -> RawData:
    """Read an MNIST-type data set's train and test files from ``root``.

    Raises:
        MissingDataError: when a file is missing.
        DataError: when a file is corrupt or the files do not match.
    """
    files = find_idx_files(root, source)
    splits = {}
    for part in ("train", "test"):
        img_path, lab_path = files[f"{part}_images"], files[f"{part}_labels"]
        images = read_idx(img_path, ndim=3)
        labels = _labels(read_idx(lab_path, ndim=1), lab_path, images.shape[0])
        splits[part] = IndexedDataset(_images(images), labels, 10, f"{source.name}-{part}")
    return RawData(
        train=splits["train"],
        test=splits["test"],
        source_paths=[files[r] for r in IDX_FILES],
        augment_policy=AugmentPolicy(padding=2, flip=False),
        class_names=list(source.class_names),
    )


def _root(config: DataConfig, source: IdxSource) -> str:
    return os.path.expanduser(config.root) if config.root else source.default_root


def _check_fashion_mnist(config: DataConfig) -> None:
    find_idx_files(_root(config, FASHION_MNIST), FASHION_MNIST)


def _check_mnist(config: DataConfig) -> None:
    find_idx_files(_root(config, MNIST), MNIST)


@register_dataset("fashion_mnist", check=_check_fashion_mnist)
def load_fashion_mnist(config: DataConfig, seed: int) -> RawData:
    """Fashion-MNIST: 60,000 training and 10,000 test images 28x28 of 10 clothing classes.

    Default root ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``). Takes no options; ``seed`` is unused (fixed test set).
    """
    parse_options(NoOptions, config)
    return load_idx_dataset(_root(config, FASHION_MNIST), FASHION_MNIST)


@register_dataset("mnist", check=_check_mnist)
def load_mnist(config: DataConfig, seed: int) -> RawData:
    """MNIST: 60,000 training and 10,000 test images 28x28 of handwritten digits.

    Default root ``/usr/share/datasets/mnist``. Takes no options; ``seed`` is unused (fixed
    test set).
    """
    parse_options(NoOptions, config)
    return load_idx_dataset(_root(config, MNIST), MNIST)
