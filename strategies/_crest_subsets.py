"""CREST's random subsets and mini-batch coresets: quotas, the stratified draw, the FL batch.

Three jobs, each vectorised over subsets and classes:

* :func:`subset_quotas` splits a subset's size over classes (:func:`subsetlab.quotas.allocate_quotas`:
  largest remainder, capped by what each class holds, the shortfall of scarce classes redistributed);
* :class:`ClassPool` + :func:`draw_subsets` draw ``P`` class-stratified random subsets of size
  ``r`` from the active pool with one generator, by rejection of duplicates (``O(P r)`` work,
  not ``O(P N)``);
* :func:`minibatch_coresets` solves the ``P x C`` per-class facility-location problems of one
  round in one call of :func:`subsetlab.submodular.facility_location_batched` and keeps exactly
  ``m`` examples per subset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from subsetlab.quotas import allocate_quotas
from subsetlab.submodular import facility_location_batched

__all__ = [
    "ClassPool",
    "Coresets",
    "allocate_quotas",
    "draw_subsets",
    "minibatch_coresets",
    "subset_quotas",
]


def subset_quotas(pool_counts: torch.Tensor, r: int) -> torch.Tensor:
    """Class quotas of one random subset of size ``r`` drawn from a pool.

    Proportional to the pool's class counts, except that every class present in the pool
    keeps at least one member when ``r`` is at least the number of such classes (so rare
    classes stay represented in every subset).

    Args:
        pool_counts: ``[C]`` members per class in the active pool.
        r: Subset size (clamped to the pool size).
    """
    pool_counts = pool_counts.long()
    r = min(int(r), int(pool_counts.sum()))
    present = pool_counts > 0
    k = int(present.sum())
    if r >= k:
        base = present.long()
        return base + allocate_quotas(pool_counts - base, r - k, proportions=pool_counts.double())
    return allocate_quotas(pool_counts, r)


class ClassPool:
    """The active pool grouped by class, on the CPU (where the generator draws).

    Attributes:
        members: ``[n_pool]`` dataset indices of the pool, grouped by class (ascending class,
            ascending index within a class).
        counts: ``[C]`` pool members per class.
        starts: ``[C]`` offset of each class's block in ``members``.
    """

    def __init__(self, labels: torch.Tensor, mask: torch.Tensor, num_classes: int) -> None:
        labels, mask = labels.cpu().long(), mask.cpu().bool()
        idx = torch.nonzero(mask).squeeze(1)
        lab = labels[idx]
        order = torch.sort(lab, stable=True).indices
        self.members = idx[order]
        self.counts = torch.bincount(lab, minlength=num_classes)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.num_classes = int(num_classes)

    def __len__(self) -> int:
        return int(self.members.shape[0])


def draw_subsets(pool: ClassPool, P: int, r: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``P`` independent class-stratified random subsets of size ``r`` from ``pool``.

    Each subset holds :func:`subset_quotas` members of each class, drawn uniformly without
    replacement; different subsets are drawn independently and may overlap (as in the
    release). Columns are grouped by class: the same column holds the same class in every
    subset. Sparse classes (quota at most half the class) are drawn with replacement and the
    duplicates redrawn until none is left (symmetric in the members, hence uniform; usually 2-3
    rounds of an ``[P, r]`` sort); dense classes take the first quota of a random permutation.

    Args:
        pool: The active pool.
        P: Number of subsets.
        r: Subset size (clamped to the pool size).
        generator: CPU generator; the only source of randomness.

    Returns:
        ``(subsets, column_class)``: ``[P, r]`` int64 dataset indices (CPU) and ``[r]`` class
        of each column.
    """
    q = subset_quotas(pool.counts, r)
    r = int(q.sum())
    col_cls = torch.repeat_interleave(torch.arange(pool.num_classes), q)
    n_col = pool.counts[col_cls]
    s_col = pool.starts[col_cls]
    dense = 2 * q > pool.counts
    sparse_col = ~dense[col_cls]
    u = torch.rand(P, r, generator=generator, dtype=torch.float64)
    pos = (u * n_col.double()).long().clamp_(max=(n_col - 1).clamp(min=0)) + s_col
    pos[:, ~sparse_col] = -1  # filled below
    if bool(sparse_col.any()):
        cols = torch.nonzero(sparse_col).squeeze(1)
        sub = pos[:, cols]
        n_sub, s_sub = n_col[cols].double(), s_col[cols]
        while True:
            srt, order = sub.sort(dim=1)
            dup_sorted = srt[:, 1:] == srt[:, :-1]
            if not bool(dup_sorted.any()):
                break
            dup = torch.zeros_like(sub, dtype=torch.bool)
            dup.scatter_(1, order[:, 1:], dup_sorted)
            rows, cc = dup.nonzero(as_tuple=True)
            fresh = torch.rand(rows.shape[0], generator=generator, dtype=torch.float64)
            sub[rows, cc] = (fresh * n_sub[cc]).long().clamp_(max=(n_sub[cc].long() - 1)) + s_sub[cc]
        pos[:, cols] = sub
    for c in torch.nonzero(dense & (q > 0)).squeeze(1).tolist():
        qc, nc, sc = int(q[c]), int(pool.counts[c]), int(pool.starts[c])
        perm = torch.rand(P, nc, generator=generator).argsort(dim=1)[:, :qc]
        pos[:, col_cls == c] = perm + sc
    return pool.members[pos], col_cls


@dataclass
class Coresets:
    """The mini-batch coresets of one round.

    Attributes:
        indices: ``[P, m]`` dataset indices; row ``p`` is the coreset of subset ``p``.
        weights: ``[P, m]`` cluster sizes (each row sums to ``r``).
        positions: ``[P, m]`` columns of the chosen examples in the subsets tensor.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    positions: torch.Tensor


def minibatch_coresets(
    subsets: torch.Tensor,
    labels: torch.Tensor,
    emb: torch.Tensor,
    m: int,
    num_classes: int,
    similarity: str = "exp",
) -> Coresets:
    """Select ``m`` examples from each random subset by per-class facility location.

    For subset ``p`` and class ``c`` the ground set is the members of class ``c`` in ``V_p``;
    its budget is :func:`allocate_quotas` of ``m`` over the class counts inside ``V_p``. All
    ``P x C`` problems go to :func:`~subsetlab.submodular.facility_location_batched` at once.
    Nothing here assumes the class-grouped column layout of :func:`draw_subsets`.

    Args:
        subsets: ``[P, r]`` dataset indices.
        labels: ``[P, r]`` their labels.
        emb: ``[P, r, d]`` their gradient embeddings.
        m: Examples kept per subset (clamped to ``r``).
        num_classes: C.
        similarity: ``"exp"`` or ``"max_minus_dist"``.
    """
    P, r = subsets.shape
    C = int(num_classes)
    dev = emb.device
    m = min(int(m), r)
    labels = labels.to(dev).long()
    counts = torch.zeros(P, C, dtype=torch.long, device=dev)
    counts.scatter_add_(1, labels, torch.ones_like(labels))
    k = allocate_quotas(counts, m)  # [P, C], every row sums to m
    # Columns of each row sorted by class; class c of row p occupies [start, start + count).
    order = torch.sort(labels, dim=1, stable=True).indices
    starts = torch.cumsum(counts, 1) - counts
    n = max(1, int(counts.max()))
    j = torch.arange(n, device=dev)
    mask = j.view(1, 1, n) < counts.unsqueeze(2)  # [P, C, n]
    slot = (starts.unsqueeze(2) + j.view(1, 1, n)).clamp(max=r - 1)
    cols = torch.gather(order.unsqueeze(1).expand(P, C, r), 2, slot)  # [P, C, n] columns
    cols = torch.where(mask, cols, torch.zeros_like(cols))
    x = emb.gather(1, cols.reshape(P, C * n, 1).expand(P, C * n, emb.shape[2])).reshape(P * C, n, emb.shape[2])
    res = facility_location_batched(x, k.reshape(-1), mask.reshape(P * C, n), similarity=similarity)
    chosen, w, _ = res.flat(cols.reshape(P * C, n))  # problem-major: p, then c, then greedy order
    chosen = chosen.view(P, m)
    w = w.view(P, m).float()
    return Coresets(subsets.to(dev).gather(1, chosen), w, chosen)
