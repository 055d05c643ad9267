"""Materialise any map-style torch ``Dataset`` of ``(x, y)`` pairs as an :class:`IndexedDataset`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from subsetlab.data.base import IndexedDataset
from subsetlab.errors import ConfigError, DataError

__all__ = ["from_torch_dataset"]


def _as_list(items: list[Any]) -> list[Any]:
    return items


def _features(x: Any, i: int, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            arr = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - anything unconvertible is a data error
            raise DataError(
                f"Dataset {name!r}: x of item {i} ({type(x).__name__}) cannot be converted to an "
                f"array ({exc}); return a tensor, a NumPy array or an image."
            ) from None
        if arr.dtype.kind not in "biuf":
            raise DataError(
                f"Dataset {name!r}: x of item {i} has non-numeric dtype {arr.dtype} "
                f"({type(x).__name__}); return numeric features (a tensor or a NumPy array)."
            )
        x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.is_complex():
        raise DataError(f"Dataset {name!r}: x of item {i} is complex ({x.dtype}); return real features.")
    return x.detach().to("cpu", torch.float32)


def _label(y: Any, i: int, name: str) -> int:
    if isinstance(y, (np.ndarray, np.generic)):
        shape, integral = np.shape(y), np.asarray(y).dtype.kind in "iu"
    elif isinstance(y, torch.Tensor):
        shape = tuple(y.shape)
        integral = not (y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex())
    elif isinstance(y, int) and not isinstance(y, bool):
        return y
    else:
        shape, integral = (), False
    if int(np.prod(shape)) != 1:
        raise DataError(
            f"Dataset {name!r}: y of item {i} has shape {shape}; expected one integer class id "
            f"per example (not one-hot or multi-label)."
        )
    if not integral:
        raise DataError(
            f"Dataset {name!r}: y of item {i} is {type(y).__name__} {y!r:.40}; labels must be "
            f"integer class ids (an int, or an integer tensor/array of one element). Convert "
            f"them, e.g. int(y)."
        )
    return int(np.asarray(y).reshape(-1)[0]) if not isinstance(y, torch.Tensor) else int(y.reshape(-1)[0])


def from_torch_dataset(
    ds: Any,
    num_classes: int | None = None,
    name: str = "dataset",
    batch_size: int = 256,
    num_workers: int = 0,
) -> IndexedDataset:
    """Read every item of a map-style dataset into memory as an :class:`IndexedDataset`.

    Items are fetched in index order through a ``DataLoader`` (``batch_size`` items per fetch,
    ``num_workers`` worker processes; no shuffling and no use of the global RNG). Each item
    must be an ``(x, y)`` pair: ``x`` a tensor, NumPy array or anything ``numpy.asarray``
    accepts (a PIL image...), stored as float32 without rescaling; ``y`` an integer class id.

    Args:
        ds: The dataset: ``len(ds)`` and ``ds[i]`` for ``i`` in ``range(len(ds))``.
        num_classes: Number of classes; ``max(y) + 1`` when omitted.
        name: Name of the resulting dataset (used in messages and reports).
        batch_size: Items fetched per ``DataLoader`` batch.
        num_workers: ``DataLoader`` worker processes (0 reads in this process).

    Returns:
        The materialised dataset (CPU tensors, features float32, labels int64).

    Raises:
        DataError: when the dataset is empty, an item is not an ``(x, y)`` pair, the feature
            shapes differ, or a label is not an integer.
        ConfigError: when ``batch_size`` or ``num_workers`` is out of range.
    """
    from torch.utils.data import DataLoader

    if int(batch_size) < 1 or int(num_workers) < 0:
        raise ConfigError(
            f"from_torch_dataset needs batch_size >= 1 and num_workers >= 0. Got batch_size="
            f"{batch_size}, num_workers={num_workers} instead."
        )
    try:
        n = len(ds)
    except TypeError:
        raise DataError(
            f"Dataset {name!r} ({type(ds).__name__}) has no len(); only map-style datasets "
            f"(with __len__ and __getitem__) can be materialised."
        ) from None
    if n == 0:
        raise DataError(f"Dataset {name!r} is empty; it needs at least one (x, y) item.")
    loader = DataLoader(
        ds,
        batch_size=int(batch_size),
        shuffle=False,
        num_workers=int(num_workers),
        collate_fn=_as_list,
        generator=torch.Generator().manual_seed(0),  # DataLoader draws a base seed even unshuffled
    )
    xs: torch.Tensor | None = None
    ys = torch.empty(n, dtype=torch.int64)
    i = 0
    for items in loader:
        for item in items:
            if i >= n:
                raise DataError(f"Dataset {name!r} yielded more than len(ds) = {n} items.")
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                kind = f"a {len(item)}-tuple" if isinstance(item, (tuple, list)) else type(item).__name__
                raise DataError(
                    f"Dataset {name!r}: item {i} is {kind}; expected an (x, y) pair. Wrap the "
                    f"dataset so that ds[i] returns (features, class id)."
                )
            x = _features(item[0], i, name)
            if xs is None:
                xs = torch.empty((n, *x.shape), dtype=torch.float32)
            elif tuple(x.shape) != tuple(xs.shape[1:]):
                raise DataError(
                    f"Dataset {name!r}: x of item {i} has shape {tuple(x.shape)} but item 0 had "
                    f"{tuple(xs.shape[1:])}; all examples must have the same shape (resize or pad them)."
                )
            xs[i] = x
            ys[i] = _label(item[1], i, name)
            i += 1
    if i != n or xs is None:
        raise DataError(f"Dataset {name!r} yielded {i} items but len(ds) is {n}.")
    return IndexedDataset(xs, ys, num_classes, name)
