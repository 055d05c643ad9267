"""Gaussian blobs: a tiny, fully seeded data set for tests and quick experiments."""

from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator

from subsetlab.config import DataConfig, FrozenConfig
from subsetlab.data.base import IndexedDataset
from subsetlab.data.registry import RawData, parse_options, register_dataset
from subsetlab.data.splits import stratified_sizes
from subsetlab.seeding import torch_generator

__all__ = ["SyntheticOptions", "load_synthetic", "make_blobs"]


class SyntheticOptions(FrozenConfig):
    """Options of the ``synthetic`` data set (Gaussian blobs, unit within-class variance)."""

    n: int = Field(1000, ge=2, le=10_000_000, description="Training examples.")
    n_test: int = Field(500, ge=1, le=10_000_000, description="Test examples (balanced classes).")
    dim: int = Field(10, ge=1, le=100_000, description="Feature dimension.")
    classes: int = Field(4, ge=2, le=10_000, description="Number of classes (blobs).")
    separation: float = Field(
        3.0, ge=0.0, le=1e6, description="Distance between blob centres, in within-class standard deviations."
    )
    imbalance: float = Field(
        1.0, ge=1.0, le=1e6, description="Training-set ratio of the largest to the smallest class "
        "(class sizes decay geometrically); 1 is balanced."
    )

    @model_validator(mode="after")
    def _enough_examples(self) -> SyntheticOptions:
        if self.n < self.classes or self.n_test < self.classes:
            raise ValueError(
                f"n ({self.n}) and n_test ({self.n_test}) must be at least classes "
                f"({self.classes}) so every class has an example; raise them or lower classes"
            )
        return self


def make_blobs(opts: SyntheticOptions, seed: int) -> tuple[IndexedDataset, IndexedDataset]:
    """Draw the training and test blobs of ``opts`` from ``seed``.

    Centres are ``separation`` apart (exactly, via orthonormal directions, when
    ``classes <= dim``; about that far otherwise); every class keeps at least one example.

    Returns:
        ``(train, test)`` datasets with float32 features ``[N, dim]``.
    """
    g = torch_generator(seed, "synthetic", *opts.model_dump().values())
    k, d = opts.classes, opts.dim
    raw = torch.randn(d, k, generator=g, dtype=torch.float64)
    if k <= d:
        directions = torch.linalg.qr(raw).Q.T  # [k, d], orthonormal rows
    else:
        directions = (raw / raw.norm(dim=0, keepdim=True).clamp_min(1e-12)).T
    centres = (directions * (opts.separation / math.sqrt(2.0))).float()
    weights = torch.tensor([opts.imbalance ** (-c / (k - 1)) for c in range(k)], dtype=torch.float64)

    def draw(n: int, w: torch.Tensor, name: str) -> IndexedDataset:
        sizes = stratified_sizes(w, n, lower=1, upper=torch.full((k,), n))
        y = torch.repeat_interleave(torch.arange(k), sizes)
        y = y[torch.randperm(n, generator=g)]
        x = centres[y] + torch.randn(n, d, generator=g)
        return IndexedDataset(x, y, k, name)

    return draw(opts.n, weights, "synthetic-train"), draw(opts.n_test, torch.ones(k), "synthetic-test")


@register_dataset("synthetic")
def load_synthetic(config: DataConfig, seed: int) -> RawData:
    """Gaussian blobs drawn from ``seed``: flat features ``[N, dim]``, no augmentation.

    Options ``n``, ``n_test``, ``dim``, ``classes``, ``separation`` and ``imbalance`` (see
    :class:`SyntheticOptions`); the data themselves depend on ``seed`` and the options.
    """
    opts = parse_options(SyntheticOptions, config)
    train, test = make_blobs(opts, seed)
    return RawData(
        train=train,
        test=test,
        source_paths=[],
        augment_policy=None,
        class_names=None,
        meta={"options": opts.model_dump()},
    )
