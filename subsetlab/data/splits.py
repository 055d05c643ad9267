"""Seeded stratified splits: how many examples of each class, and which ones.

Both steps are deterministic: sizes follow from the class counts alone
(:func:`subsetlab.quotas.stratified_sizes`: largest-remainder rounding, ties to the lower class
id) and the chosen examples from one ``randperm`` of the given generator, so a split depends
only on the generator's seed and the labels.
"""

from __future__ import annotations

import math

import torch

from subsetlab.quotas import stratified_sizes

__all__ = ["round_half_up", "stratified_sizes", "stratified_split"]


def round_half_up(x: float) -> int:
    """``x`` rounded to the nearest integer, halves upwards (unlike Python's ``round``)."""
    return math.floor(x + 0.5)


def stratified_split(
    labels: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``sizes[c]`` random examples of each class ``c``; return picked and the rest.

    Args:
        labels: Class ids ``[N]``, int64 in ``[0, len(sizes))``.
        sizes: How many examples of each class to pick, ``[C]``.
        generator: A CPU generator; the only source of randomness.

    Returns:
        ``(picked, rest)``: sorted int64 CPU index tensors partitioning ``range(N)``.
    """
    y = labels.detach().to("cpu", torch.int64)
    n = int(y.shape[0])
    k = int(sizes.shape[0])
    sizes = sizes.to("cpu", torch.int64)
    counts = torch.bincount(y, minlength=k)
    perm = torch.randperm(n, generator=generator)
    yp = y[perm]
    order = torch.argsort(yp, stable=True)
    grouped = perm[order]  # indices grouped by class, random order within each class
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[yp[order]]
    pick = rank < sizes[yp[order]]
    return grouped[pick].sort().values, grouped[~pick].sort().values
