"""Seeded stratified splits: how many examples of each class, and which ones.

Both steps are deterministic: sizes follow from the class counts alone (largest-remainder
rounding, ties to the lower class id) and the chosen examples from one ``randperm`` of the
given generator, so a split depends only on the generator's seed and the labels.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from subsetlab.errors import DataError

__all__ = ["round_half_up", "stratified_sizes", "stratified_split"]


def round_half_up(x: float) -> int:
    """``x`` rounded to the nearest integer, halves upwards (unlike Python's ``round``)."""
    return math.floor(x + 0.5)


def stratified_sizes(
    counts: torch.Tensor | np.ndarray | list[int],
    total: int,
    lower: torch.Tensor | np.ndarray | list[int] | int = 0,
    upper: torch.Tensor | np.ndarray | list[int] | None = None,
) -> torch.Tensor:
    """Per-class sizes proportional to ``counts`` that sum to ``total``, within bounds.

    Starts from ``floor(total * counts / sum(counts))`` clipped to ``[lower, upper]`` and
    moves the difference one example at a time: missing examples go to the classes furthest
    below their proportional share, surplus ones leave the classes furthest above it (ties to
    the lower class id).

    Args:
        counts: Examples per class, ``[C]`` (or any non-negative class weights).
        total: Required sum of the sizes.
        lower: Smallest size per class (a scalar or ``[C]``).
        upper: Largest size per class (``[C]``); defaults to ``floor(counts)``.

    Returns:
        int64 tensor ``[C]`` of sizes, ``lower <= sizes <= upper`` and ``sizes.sum() == total``.

    Raises:
        DataError: when no sizes within the bounds sum to ``total``.
    """
    c = np.asarray(torch.as_tensor(counts).cpu(), dtype=np.float64).reshape(-1)
    k = c.shape[0]
    lo = np.broadcast_to(np.asarray(torch.as_tensor(lower).cpu(), dtype=np.int64), (k,)).copy()
    if upper is None:
        hi = np.floor(c).astype(np.int64)
    else:
        hi = np.asarray(torch.as_tensor(upper).cpu(), dtype=np.int64).reshape(-1)
    total = int(total)
    if (lo > hi).any() or not (lo.sum() <= total <= hi.sum()):
        raise DataError(
            f"Cannot split {c.sum():g} examples in {k} classes into a stratified part of "
            f"{total}: it must lie in [{int(lo.sum())}, {int(hi.sum())}] under the per-class "
            f"bounds. Change the requested size."
        )
    n = float(c.sum())
    ideal = c * (total / n) if n > 0 else np.zeros(k)
    sizes = np.clip(np.floor(ideal).astype(np.int64), lo, hi)
    diff = total - int(sizes.sum())
    while diff != 0:  # at most a few steps per class: the floor loses < 1 per class
        gap = ideal - sizes
        if diff > 0:
            gap[sizes >= hi] = -np.inf
            j = int(np.argmax(gap))
            sizes[j] += 1
            diff -= 1
        else:
            gap[sizes <= lo] = np.inf
            j = int(np.argmin(gap))
            sizes[j] -= 1
            diff += 1
    return torch.from_numpy(sizes)


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
