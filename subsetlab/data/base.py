"""The indexed, in-memory dataset every part of subsetlab works on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from subsetlab.errors import DataError

__all__ = ["IndexedDataset", "Augment", "DataSplits"]

#: A train-time augmentation: ``(x_batch, generator) -> x_batch``, pure torch ops.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class IndexedDataset:
    """Features and integer labels held as tensors, fetched by example index.

    Args:
        x: Features, shape ``[N, ...]``, floating point.
        y: Labels, shape ``[N]``, integer in ``[0, num_classes)``.
        num_classes: Number of classes; inferred as ``max(y) + 1`` when omitted.
        name: A short name used in logs and reports.
        augment: Optional train-time augmentation applied by the trainer to training batches
            only (never to embeddings, checks or evaluation).

    Raises:
        DataError: when shapes, dtypes, label range or feature values are invalid.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int | None = None,
        name: str = "dataset",
        augment: Augment | None = None,
    ) -> None:
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise DataError(
                f"Dataset {name!r}: x and y must be torch tensors. Got {type(x).__name__} and "
                f"{type(y).__name__} instead; convert with torch.as_tensor."
            )
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
            raise DataError(
                f"Dataset {name!r}: labels must be an integer tensor. Got dtype {y.dtype} "
                f"instead; convert with y.long() after checking the values are class ids."
            )
        if y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise DataError(
                f"Dataset {name!r}: expected x of shape [N, ...] and y of shape [N]. Got "
                f"x {tuple(x.shape)} and y {tuple(y.shape)} instead."
            )
        if not x.dtype.is_floating_point:
            x = x.float()
        y = y.long()
        n = int(y.shape[0])
        if num_classes is None:
            num_classes = int(y.max()) + 1 if n else 0
        if n:
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= num_classes:
                raise DataError(
                    f"Dataset {name!r}: labels must lie in [0, {num_classes}). Got labels in "
                    f"[{lo}, {hi}] instead; remap them to consecutive class ids."
                )
        if n and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x.reshape(n, -1))).any(dim=1).sum())
            raise DataError(
                f"Dataset {name!r}: {bad} example(s) have NaN or infinite features. Drop or "
                f"impute them before training."
            )
        self.x = x
        self.y = y
        self.num_classes = int(num_classes)
        self.name = name
        self.augment = augment

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return (
            f"IndexedDataset(name={self.name!r}, n={len(self)}, input_shape="
            f"{self.input_shape}, num_classes={self.num_classes})"
        )

    @property
    def labels(self) -> torch.Tensor:
        """Labels, int64, shape ``[N]``."""
        return self.y

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example's features."""
        return tuple(self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        """Device the tensors live on."""
        return self.x.device

    def class_counts(self) -> torch.Tensor:
        """Number of examples per class, int64, shape ``[num_classes]``."""
        return torch.bincount(self.y, minlength=self.num_classes)

    def get(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)`` for the given example indices (on the dataset's device)."""
        indices = indices.to(self.x.device)
        return self.x.index_select(0, indices), self.y.index_select(0, indices)

    def subset(self, indices: torch.Tensor, name: str | None = None) -> IndexedDataset:
        """A new dataset holding a copy of the given examples (same classes, same augment)."""
        x, y = self.get(indices)
        return IndexedDataset(x, y, self.num_classes, name or self.name, self.augment)

    def to(self, device: torch.device | str) -> IndexedDataset:
        """The same dataset with its tensors on ``device`` (self when already there)."""
        device = torch.device(device)
        if self.x.device == device:
            return self
        out = IndexedDataset.__new__(IndexedDataset)
        out.x, out.y = self.x.to(device), self.y.to(device)
        out.num_classes, out.name, out.augment = self.num_classes, self.name, self.augment
        return out

    def nbytes(self) -> int:
        """Memory held by the features and labels, in bytes."""
        return self.x.element_size() * self.x.numel() + self.y.element_size() * self.y.numel()


@dataclass
class DataSplits:
    """The three splits of one data set, as the data loaders return them.

    ``val`` may be None when the validation fraction is 0. ``meta`` holds free-form facts
    (source files, normalisation statistics) recorded with the run.
    """

    train: IndexedDataset
    val: IndexedDataset | None
    test: IndexedDataset
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes of the training split."""
        return self.train.num_classes
