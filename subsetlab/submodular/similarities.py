"""Euclidean distances and the non-negative similarities facility location maximises over."""

from __future__ import annotations

import torch

from subsetlab.errors import DataError
from subsetlab.submodular._base import SimilarityKind, _check_embeddings, _check_kind

__all__ = ["pairwise_distances", "similarity", "similarity_batched"]


def _centered(x: torch.Tensor) -> torch.Tensor:
    # Distances do not change under translation; centring reduces the cancellation in
    # ||a||^2 + ||b||^2 - 2ab.
    return x - x.mean(dim=0, keepdim=True)


def _dist_rows(
    xc: torch.Tensor, sq: torch.Tensor, start: int, end: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Euclidean distances ``[end - start, n]`` from rows ``start:end`` to all rows (self = 0)."""
    d = torch.addmm(sq[None, :], xc[start:end], xc.T, alpha=-2.0, out=out)
    d.add_(sq[start:end, None]).clamp_(min=0.0).sqrt_()
    d.diagonal(offset=start).zero_()
    return d


def _block_rows(n: int, itemsize: int) -> int:
    # rows per block when filling an [n, n] matrix: a few MiB, so the element-wise passes run
    # in cache
    return max(1, (4 << 20) // max(1, n * itemsize))


def _dist_index(xc: torch.Tensor, sq: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``[len(idx), n]`` from rows ``idx`` to all rows (self = 0)."""
    d = torch.addmm(sq[None, :], xc.index_select(0, idx), xc.T, alpha=-2.0)
    d.add_(sq.index_select(0, idx)[:, None]).clamp_(min=0.0).sqrt_()
    d[torch.arange(idx.shape[0], device=idx.device), idx] = 0.0
    return d


def _to_sim_(d: torch.Tensor, kind: str, max_dist: torch.Tensor | float | None, dim: int) -> torch.Tensor:
    """Turn distances into similarity in place."""
    if kind == "max_minus_dist":
        return d.neg_().add_(max_dist).clamp_(min=0.0)
    return d.div_(-float(dim)).exp_()


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``x``.

    Computed as ``sqrt(clamp(||a||^2 + ||b||^2 - 2 a.b, 0))`` on centred rows, with an exact
    zero diagonal.

    Args:
        x: ``[n, d]`` embeddings (any device; half precision is computed in float32).

    Returns:
        ``[n, n]`` distances on ``x``'s device.
    """
    x = _check_embeddings(x, 2)
    return _fill_similarity(x, None)


def _fill_similarity(x: torch.Tensor, kind: str | None, symmetric: bool = True) -> torch.Tensor:
    """Distances (``kind=None``) or similarity of the rows of ``x``, filled block by block.

    ``symmetric=False`` skips making it exactly symmetric (the greedy reads rows only).
    """
    n, dim = x.shape
    xc = _centered(x)
    sq = (xc * xc).sum(1)
    out = torch.empty(n, n, dtype=x.dtype, device=x.device)
    block = _block_rows(n, x.element_size())
    mx = torch.zeros((), dtype=x.dtype, device=x.device)
    for s in range(0, n, block):
        d = _dist_rows(xc, sq, s, min(s + block, n), out=out[s : s + block])
        if kind == "exp":
            _to_sim_(d, kind, None, dim)
        elif kind == "max_minus_dist":
            mx = torch.maximum(mx, d.max())
    if kind == "max_minus_dist":
        for s in range(0, n, block):
            _to_sim_(out[s : s + block], kind, mx, dim)
    if symmetric:
        _mirror_upper_(out, 256)
    return out


def _mirror_upper_(a: torch.Tensor, tile: int) -> None:
    """Make square ``a`` exactly symmetric in place by copying its upper triangle down.

    Row-block matrix products may round ``a[i, j]`` and ``a[j, i]`` differently; an exactly
    symmetric similarity is its own candidate-major form, so the solvers need no transposed copy.
    """
    n = a.shape[0]
    for s in range(0, n, tile):
        e = min(s + tile, n)
        d = a[s:e, s:e]
        d.copy_(torch.triu(d) + torch.triu(d, 1).T)
        if e < n:
            a[e:, s:e].copy_(a[s:e, e:].T)


def similarity(x: torch.Tensor, kind: SimilarityKind = "max_minus_dist") -> torch.Tensor:
    """Non-negative pairwise similarity of the rows of ``x`` for facility location.

    Args:
        x: ``[n, d]`` embeddings.
        kind: ``"max_minus_dist"``: ``max_{a,b} dist(a, b) - dist`` (CRAIG); ``"exp"``:
            ``exp(-dist / d)`` with ``d`` the embedding length (CREST release).

    Returns:
        ``[n, n]`` similarity on ``x``'s device, symmetric up to float rounding; the diagonal
        is the row maximum.

    Raises:
        ConfigError: unknown ``kind``.
        DataError: ``x`` is not 2-D or not finite.
    """
    _check_kind(kind)
    x = _check_embeddings(x, 2)
    return _fill_similarity(x, kind)


def similarity_batched(
    x: torch.Tensor, mask: torch.Tensor | None = None, kind: SimilarityKind = "max_minus_dist"
) -> torch.Tensor:
    """:func:`similarity` for ``P`` padded problems at once.

    Args:
        x: ``[P, n, d]`` embeddings; padding rows may hold anything finite.
        mask: ``[P, n]`` bool, True for valid rows; None means all valid.
        kind: as in :func:`similarity`; for ``"max_minus_dist"`` the maximum distance is taken
            per problem over its valid rows only.

    Returns:
        ``[P, n, n]`` similarity, 0 wherever a row or column is padding.
    """
    _check_kind(kind)
    x = _check_embeddings(x, 3)
    P, n, dim = x.shape
    if mask is None:
        mask = torch.ones(P, n, dtype=torch.bool, device=x.device)
    mask = _check_mask(mask, P, n)
    m = mask.unsqueeze(2).to(x.dtype)
    count = m.sum(1, keepdim=True).clamp(min=1.0)
    xc = (x - (x * m).sum(1, keepdim=True) / count) * m
    sq = (xc * xc).sum(2)
    d = torch.baddbmm(sq.unsqueeze(2) + sq.unsqueeze(1), xc, xc.mT, alpha=-2.0)
    d.clamp_(min=0.0).sqrt_()
    d.diagonal(dim1=1, dim2=2).zero_()
    pair = mask.unsqueeze(2) & mask.unsqueeze(1)
    d.masked_fill_(~pair, 0.0)
    max_dist = d.amax(dim=(1, 2), keepdim=True) if n else 0.0
    s = _to_sim_(d, kind, max_dist, dim)
    return s.masked_fill_(~pair, 0.0)


def _check_mask(mask: torch.Tensor, P: int, n: int) -> torch.Tensor:
    if mask.shape != (P, n):
        raise DataError(f"mask must have shape {(P, n)} (problems, rows). Got {tuple(mask.shape)} instead.")
    return mask.to(torch.bool)


# ----------------------------------------------------------------------------------------------
# candidate-row oracles: what the greedy needs from a similarity, materialised or not
#
# The greedy only ever needs (a) the float64 gains of a set of candidates given the current
# maxima ``cur`` and (b) the entries of the chosen candidate's row. Three representations
# provide them: a dense candidate-major matrix, rows computed on the fly from embeddings, and
# (once most entries can no longer contribute) a pruned sparse matrix holding only the entries
# still above ``cur``. Within one representation a candidate's gain is always summed in the same
# order, whichever other candidates are evaluated with it, so naive and lazy greedy agree bit
# for bit.
