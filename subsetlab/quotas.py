"""Class quotas: a budget split over classes in proportion, by largest remainder.

One place for the rounding that data splits, class-balanced Random, the epoch-wise baselines'
per-class budgets and CREST's subsets and coresets all use. Integer weights (class counts) are
rounded in exact integer arithmetic, so equal remainders are real ties, broken toward the lower
class id as documented, and never decided by float noise (``57*20/92`` and ``34*20/92`` have
the same remainder, ``36/92``, but not the same float remainder).

* :func:`stratified_sizes`: one row, with per-class lower and upper bounds; the difference left
  by flooring moves one example at a time to the class furthest below (or from the class
  furthest above) its proportional share. Data splits use it.
* :func:`allocate_quotas`: many rows at once (``[P, C]``), capped by what each class holds, the
  shortfall of scarce classes redistributed in proportion among the classes with room. Never
  fails. Without binding caps both are plain largest remainder and agree.
* :func:`stratified_quotas`: ``allocate_quotas`` of one row of class counts.
"""

from __future__ import annotations

import numpy as np
import torch

from subsetlab.errors import DataError

__all__ = ["allocate_quotas", "stratified_quotas", "stratified_sizes"]


def _exact(weights: torch.Tensor) -> bool:
    return bool(torch.equal(weights, weights.round()))


def _largest_remainder(weights: torch.Tensor, total: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
    """One round of largest-remainder rounding of ``total`` over ``weights`` (rows), capped by ``cap``.

    Rows where the weights sum to 0 get nothing. The result may fall short of ``total`` where
    caps bind; :func:`allocate_quotas` repeats the round on the classes with room left.
    """
    if _exact(weights):
        w = weights.long()
        wsum = w.sum(1, keepdim=True)
        num = w * total.unsqueeze(1)
        floor = torch.div(num, wsum.clamp(min=1), rounding_mode="floor")
        frac = (num - floor * wsum).double()  # remainders over a common denominator per row
    else:
        wsum = weights.sum(1, keepdim=True)
        exact = weights / wsum.clamp(min=1e-300) * total.unsqueeze(1).double()
        floor = torch.floor(exact).long()
        frac = exact - floor.double()
    floor = torch.where(wsum > 0, floor, torch.zeros_like(floor))
    alloc = torch.minimum(floor, cap)
    rest = total - alloc.sum(1)
    room = (alloc < cap) & (weights > 0)
    # Largest remainder first; ties to the lower class id (stable sort on -key).
    key = torch.where(room, frac, torch.full_like(frac, -1.0))
    order = torch.sort(-key, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    extra = room & (rank < rest.unsqueeze(1))
    return alloc + extra.long()


def allocate_quotas(
    counts: torch.Tensor, total: int | torch.Tensor, proportions: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-class quotas summing to ``total``, each at most the class's count.

    Quotas are proportional to ``proportions`` (default: ``counts``), rounded by largest
    remainder (ties to the lower class id). Where a class holds fewer members than its share,
    the shortfall goes to the classes with members left, again in proportion (or evenly over
    the classes with room when none of them has a positive proportion). Never fails: a row
    asking for more than it holds gets everything it holds.

    Args:
        counts: ``[C]`` or ``[P, C]`` int members per class (per subset).
        total: The budget per row (an int, or a ``[P]`` tensor).
        proportions: ``[C]`` or ``[P, C]`` non-negative targets; None means ``counts``.

    Returns:
        int64 quotas of the shape of ``counts``; each row sums to ``min(total, counts.sum())``.
    """
    squeeze = counts.dim() == 1
    cnt = counts.long().reshape(-1, counts.shape[-1])
    P, C = cnt.shape
    prop = cnt.double() if proportions is None else proportions.double().expand(P, C)
    prop = prop.clamp(min=0.0)
    want = torch.as_tensor(total, dtype=torch.long, device=cnt.device).expand(P)
    want = torch.minimum(want, cnt.sum(1))
    q = torch.zeros_like(cnt)
    for _ in range(C + 1):  # every round fills the request or saturates at least one class
        need = want - q.sum(1)
        if not bool((need > 0).any()):
            break
        cap = cnt - q
        room = cap > 0
        w = prop * room
        none = (w.sum(1) <= 0) & (need > 0)
        w = torch.where(none.unsqueeze(1), room.double(), w)
        q = q + _largest_remainder(w, need, cap)
    return q[0] if squeeze else q


def stratified_quotas(counts: torch.Tensor, k: int) -> torch.Tensor:
    """Per-class quotas proportional to ``counts``, each <= its count, summing exactly to ``k``.

    Largest-remainder rounding; ties go to the lower class id. ``k`` is clamped to
    ``counts.sum()``. The result is on the CPU.
    """
    return allocate_quotas(counts.long().cpu().reshape(-1), max(int(k), 0))


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
    the lower class id; exact for integer counts).

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
    if np.array_equal(c, np.round(c)):
        # Exact: shares and gaps in units of 1/n, as Python integers (no overflow, no ties by noise).
        n = int(c.sum())
        num = [int(x) * total for x in c]
        scale = n if n > 0 else 1
        start = [x // n if n > 0 else 0 for x in num]
    else:
        n = float(c.sum())
        num = list(c * (total / n)) if n > 0 else [0.0] * k
        scale = 1
        start = [int(np.floor(x)) for x in num]
    sizes = [min(max(s, int(a)), int(b)) for s, a, b in zip(start, lo, hi)]
    diff = total - sum(sizes)
    while diff != 0:  # at most a few steps per class: the floor loses < 1 per class
        gaps = [num[i] - sizes[i] * scale for i in range(k)]
        if diff > 0:
            j = max((i for i in range(k) if sizes[i] < hi[i]), key=lambda i: (gaps[i], -i))
            sizes[j] += 1
            diff -= 1
        else:
            j = min((i for i in range(k) if sizes[i] > lo[i]), key=lambda i: (gaps[i], i))
            sizes[j] -= 1
            diff += 1
    return torch.tensor(sizes, dtype=torch.int64)
