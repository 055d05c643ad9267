"""Selection kernels: facility location (torch greedy, batched, chunked, apricot) and NN-OMP.

Facility location (FL) over a ground set ``V`` with non-negative similarity::

    F(S) = sum_{i in V} max_{j in S} sim(i, j)

is maximised greedily. The weight of a chosen ``j`` is the size of its cluster: the number of
ground elements whose most similar chosen element is ``j`` (a chosen element always counts
itself; other ties go to the earliest-chosen element), so the weights of one ground set sum to
``|V|``.

Conventions shared by every function here:

* ``sim[i, j]`` is the similarity between ground element ``i`` and candidate ``j``. The greedy
  works on the candidate-major matrix ``sim.T`` (row ``c`` = what candidate ``c`` offers to every
  ground element); for the usual symmetric similarity the two are the same tensor and nothing is
  copied.
* Ties are broken toward the lowest candidate index, in every optimizer, so naive and lazy
  greedy return identical rankings and gains.
* Marginal gains are accumulated in float64 whatever the similarity's dtype, and a candidate's
  gain is always summed in the same order whichever candidates are evaluated with it, so results
  do not depend on chunking and naive and lazy greedy agree bit for bit.
* Tensors stay on the device they came in on; randomness (stochastic greedy) comes only from
  the ``torch.Generator`` passed in.
* apricot and numba are imported only inside :func:`facility_location_apricot`.

Non-negative orthogonal matching pursuit (:func:`nn_omp`) solves GradMatch's problem: a few
atoms (per-example gradients) with non-negative weights whose weighted sum matches a target.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Literal

import torch

from subsetlab.errors import ConfigError, DataError, MissingDependencyError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FLResult",
    "FLBatchResult",
    "pairwise_distances",
    "similarity",
    "similarity_batched",
    "facility_location",
    "facility_location_embeddings",
    "facility_location_batched",
    "facility_location_apricot",
    "select_facility_location",
    "pack_groups",
    "nn_omp",
]

SimilarityKind = Literal["max_minus_dist", "exp"]
Optimizer = Literal["naive", "lazy", "stochastic"]
Backend = Literal["torch", "apricot"]

#: Default cap on the bytes of similarity a solver materialises at once (256 MiB).
DEFAULT_MAX_BYTES = 256 * 2**20

_KINDS = ("max_minus_dist", "exp")
_OPTIMIZERS = ("naive", "lazy", "stochastic")
_APRICOT_OPTIMIZERS = ("lazy", "stochastic")
_BACKENDS = ("torch", "apricot")
# Lazy greedy re-evaluates this many of the best stale bounds at once before checking.
_LAZY_BATCH = 16
# Target size of one block of temporaries in the greedy's gain evaluations (cache-sized).
_CACHE_BYTES = 2 << 20
# Problems at least this large switch to a pruned sparse similarity once most entries are dead.
_SPARSE_MIN_N = 1024
# ... when at most this fraction of the n^2 entries is live (dense gains are ~10x cheaper per
# entry), then prune again whenever the live entries fall to _PRUNE_FRACTION of those stored.
_SPARSE_DENSITY = 0.05
_PRUNE_FRACTION = 0.5
# Entries per block of sparse gain evaluation.
_SPARSE_CHUNK = 1 << 18


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class FLResult:
    """Result of one facility-location selection.

    Attributes:
        ranking: ``[k]`` int64 indices of the chosen elements, in the order they were chosen.
        gains: ``[k]`` float64 marginal gain of each chosen element when it was added.
        weights: ``[k]`` cluster sizes aligned with ``ranking`` (dtype of the similarity);
            each is >= 1 and they sum to ``n`` (when ``k > 0``).
        objective: ``F(S)`` of the chosen set.
        assignment: ``[n]`` int64, for each ground element the position in ``ranking`` of its
            representative (its most similar chosen element; -1 when ``k = 0``).
    """

    ranking: torch.Tensor
    gains: torch.Tensor
    weights: torch.Tensor
    objective: float
    assignment: torch.Tensor


@dataclass
class FLBatchResult:
    """Result of :func:`facility_location_batched` over ``P`` problems padded to ``K = max k``.

    Attributes:
        ranking: ``[P, K]`` int64 positions (within each problem's padded row) of the chosen
            elements in selection order; ``-1`` past ``n_selected[p]``.
        gains: ``[P, K]`` float64 marginal gains; 0 in padding.
        weights: ``[P, K]`` cluster sizes; 0 in padding. Row ``p`` sums to the problem's number
            of valid elements (0 when ``k_p = 0``).
        objective: ``[P]`` float64 ``F(S_p)``.
        n_selected: ``[P]`` int64 number of elements chosen in each problem
            (``min(k_p, valid_p)``).
        assignment: ``[P, n]`` int64 position in ``ranking[p]`` of each element's
            representative; ``-1`` for padding.
    """

    ranking: torch.Tensor
    gains: torch.Tensor
    weights: torch.Tensor
    objective: torch.Tensor
    n_selected: torch.Tensor
    assignment: torch.Tensor

    def flat(self, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All chosen elements of all problems as flat tensors, problem by problem.

        Args:
            index: Optional ``[P, n]`` int64 map from padded positions to global indices (as
                returned by :func:`pack_groups`); without it positions are returned.

        Returns:
            ``(indices, weights, problem)``: ``[m]`` int64 chosen indices (global when
            ``index`` is given), ``[m]`` their weights and ``[m]`` int64 problem ids, in
            problem order then selection order.
        """
        valid = self.ranking >= 0
        pos = self.ranking.clamp(min=0)
        ids = pos if index is None else index.gather(1, pos)
        problem = torch.arange(self.ranking.shape[0], device=self.ranking.device)
        problem = problem.unsqueeze(1).expand_as(self.ranking)
        return ids[valid], self.weights[valid], problem[valid]


# ----------------------------------------------------------------------------------------------
# validation helpers


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ConfigError(
            f"The similarity kind must be one of {list(_KINDS)}. Got {kind!r} instead. "
            "Use 'max_minus_dist' (CRAIG) or 'exp' (CREST release)."
        )


def _check_optimizer(optimizer: str, allowed: tuple[str, ...] = _OPTIMIZERS) -> None:
    if optimizer not in allowed:
        raise ConfigError(
            f"The facility-location optimizer must be one of {list(allowed)}. "
            f"Got {optimizer!r} instead."
        )


def _check_k(k: int) -> int:
    try:
        value = operator.index(k)  # int, NumPy integer or 0-d integer tensor
    except TypeError:
        value = None
    if isinstance(k, bool) or value is None or value < 0:
        raise ConfigError(f"The budget k must be a non-negative int. Got {k!r} instead.")
    return int(value)


def _check_epsilon(epsilon: float) -> None:
    if not (0.0 < float(epsilon) < 1.0):
        raise ConfigError(
            f"epsilon of stochastic greedy must be in (0, 1). Got {epsilon!r} instead; "
            "0.01 samples ~4.6 n/k candidates per step and is close to lazy greedy."
        )


def _check_max_bytes(max_bytes: int) -> None:
    if int(max_bytes) < 1:
        raise ConfigError(f"max_bytes must be >= 1. Got {max_bytes!r} instead.")


def _as_float(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name} must be a torch.Tensor. Got {type(x).__name__} instead.")
    if not x.is_floating_point():
        x = x.float()
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # half precision distances lose too much; compute in float32
    return x


def _check_finite(x: torch.Tensor, name: str) -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise DataError(
            f"{name} contains NaN or infinite values; facility location on them is meaningless "
            "(a diverged model produces these). Check the model/embeddings before selecting."
        )


def _check_embeddings(x: torch.Tensor, ndim: int, name: str = "embeddings") -> torch.Tensor:
    x = _as_float(x, name)
    if x.ndim != ndim:
        shape = "[n, d]" if ndim == 2 else "[P, n, d]"
        raise DataError(f"{name} must have shape {shape}. Got shape {tuple(x.shape)} instead.")
    _check_finite(x, name)
    return x


def _check_sim(sim: torch.Tensor, ndim: int) -> torch.Tensor:
    sim = _as_float(sim, "sim")
    if sim.ndim != ndim or sim.shape[-1] != sim.shape[-2]:
        shape = "[n, n]" if ndim == 2 else "[P, n, n]"
        raise DataError(f"sim must be a square matrix of shape {shape}. Got {tuple(sim.shape)} instead.")
    _check_finite(sim, "sim")
    if sim.numel() and float(sim.min()) < 0:
        raise DataError(
            f"Facility location needs a non-negative similarity; sim has minimum {float(sim.min()):.4g}. "
            "Shift it (e.g. max_dist - dist) or use similarity(..., kind='exp')."
        )
    return sim


def _candidate_major(sim: torch.Tensor) -> torch.Tensor:
    """``sim`` transposed so that rows are candidates; no copy when ``sim`` is symmetric."""
    t = sim.mT
    if torch.equal(sim, t):
        return sim
    return t.contiguous()


# ----------------------------------------------------------------------------------------------
# similarity


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


_similarity = similarity  # alias: some functions below take a parameter named ``similarity``


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


class _DenseRows:
    """Candidate-major similarity held in memory."""

    sparse = False

    def __init__(self, c: torch.Tensor) -> None:
        self.c = c
        self.n = c.shape[0]
        self.dtype = c.dtype
        self.device = c.device

    def range(self, start: int, end: int) -> torch.Tensor:
        return self.c[start:end]

    def index(self, idx: torch.Tensor) -> torch.Tensor:
        return self.c.index_select(0, idx)


class _EmbeddingRows(_DenseRows):
    """Similarity rows computed on demand from embeddings (never more than a block at once)."""

    def __init__(self, x: torch.Tensor, kind: str, block: int) -> None:
        self.xc = _centered(x)
        self.sq = (self.xc * self.xc).sum(1)
        self.n, self.dim = x.shape
        self.kind = kind
        self.dtype = x.dtype
        self.device = x.device
        self.max_dist: torch.Tensor | None = None
        if kind == "max_minus_dist":
            mx = torch.zeros((), dtype=x.dtype, device=x.device)
            for s in range(0, self.n, block):
                mx = torch.maximum(mx, _dist_rows(self.xc, self.sq, s, min(s + block, self.n)).max())
            self.max_dist = mx

    def range(self, start: int, end: int) -> torch.Tensor:
        return _to_sim_(_dist_rows(self.xc, self.sq, start, end), self.kind, self.max_dist, self.dim)

    def index(self, idx: torch.Tensor) -> torch.Tensor:
        return _to_sim_(_dist_index(self.xc, self.sq, idx), self.kind, self.max_dist, self.dim)


def _row_gains(rows: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    """float64 gains ``sum_i relu(rows[c, i] - cur[i])`` for each row ``c``."""
    if rows.shape[0] == 1:
        # A one-row reduction may be split across threads (a different summation order than
        # the per-row reduction used for many rows); reduce two copies to keep bits identical.
        return (rows.expand(2, -1) - cur).clamp_(min=0.0).sum(1, dtype=torch.float64)[:1]
    return (rows - cur).clamp_(min=0.0).sum(1, dtype=torch.float64)


def _rows_per_chunk(n: int, itemsize: int, max_bytes: int) -> int:
    # Rows of similarity whose temporaries are evaluated at once: small enough to stay in cache
    # (one pass over a [rows, n] block ~10x faster than over the whole matrix) and under the
    # caller's memory cap (about two [rows, n] temporaries per chunk).
    row = max(1, n * itemsize)
    return max(1, min(_CACHE_BYTES // row, int(max_bytes) // (2 * row)))


def _dense_all_gains(rows: _DenseRows, cur: torch.Tensor, chunk: int) -> torch.Tensor:
    n = rows.n
    if chunk >= n:
        return _row_gains(rows.range(0, n), cur)
    out = torch.empty(n, dtype=torch.float64, device=rows.device)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        out[s:e] = _row_gains(rows.range(s, e), cur)
    return out


def _dense_gains(rows: _DenseRows, idx: torch.Tensor, cur: torch.Tensor, chunk: int) -> torch.Tensor:
    if 2 * idx.shape[0] >= rows.n:  # most rows: one pass in order beats gathering them
        return _dense_all_gains(rows, cur, chunk)[idx]
    if idx.shape[0] <= chunk:
        return _row_gains(rows.index(idx), cur)
    out = torch.empty(idx.shape[0], dtype=torch.float64, device=rows.device)
    for s in range(0, idx.shape[0], chunk):
        out[s : s + chunk] = _row_gains(rows.index(idx[s : s + chunk]), cur)
    return out


class _SparseRows:
    """Candidate-major similarity pruned to the entries still above ``cur`` (CSR + row ids).

    Entries at or below ``cur`` contribute ``relu(v - cur) = 0`` now and forever (``cur`` only
    grows), so dropping them changes no gain; rows of chosen candidates have no entry above
    ``cur`` and vanish. Each row's gain is summed sequentially in column order
    (``torch.segment_reduce``), so dropping zeros does not even change its rounding, and a row's
    gain has the same bits whichever other rows are evaluated with it.
    """

    sparse = True

    def __init__(self, counts: torch.Tensor, row: torch.Tensor, col: torch.Tensor, val: torch.Tensor, n: int) -> None:
        self.n = n
        self.lens = counts
        self.crow = torch.zeros(n + 1, dtype=torch.int64, device=col.device)
        torch.cumsum(counts, 0, out=self.crow[1:])
        self.row, self.col, self.val = row, col, val
        self.nnz = int(col.shape[0])
        self.dtype, self.device = val.dtype, val.device

    @staticmethod
    def from_dense(rows: _DenseRows, cur: torch.Tensor, block: int, limit: int) -> "_SparseRows | None":
        """The live entries of ``rows``; None (early) once there are more than ``limit``."""
        n = rows.n
        rws, cols, vals = [], [], []
        total = 0
        for s in range(0, n, block):
            e = min(s + block, n)
            blk = rows.range(s, e)
            nz = (blk > cur).view(-1).nonzero().squeeze(1)
            total += nz.shape[0]
            if total > limit:
                return None
            r = nz.div(n, rounding_mode="floor")
            rws.append(r + s)
            cols.append(nz - r * n)
            vals.append(blk.reshape(-1).index_select(0, nz))
        row = torch.cat(rws)
        counts = torch.bincount(row, minlength=n)
        return _SparseRows(counts, row, torch.cat(cols), torch.cat(vals), n)

    def pruned(self, cur: torch.Tensor, limit: int) -> "_SparseRows | None":
        """The entries still live; None when there are more than ``limit``.

        The count is first estimated on every 16th entry (cheap); the full pass is made only
        when the estimate is under the limit.
        """
        step = 16
        est = int(torch.count_nonzero(self.val[::step] > torch.take(cur, self.col[::step]))) * step
        if est > limit:
            return None
        nz = (self.val > torch.take(cur, self.col)).nonzero().squeeze(1)
        if nz.shape[0] > limit:
            return None
        row = self.row.index_select(0, nz)
        counts = torch.bincount(row, minlength=self.n)
        return _SparseRows(counts, row, self.col.index_select(0, nz), self.val.index_select(0, nz), self.n)

    def _terms(self, flat: torch.Tensor | None, cur: torch.Tensor) -> torch.Tensor:
        if flat is None:
            t = self.val - torch.take(cur, self.col)
        else:
            t = self.val.index_select(0, flat) - torch.take(cur, self.col.index_select(0, flat))
        return t.clamp_(min=0.0).to(torch.float64)

    def all_gains(self, cur: torch.Tensor) -> torch.Tensor:
        """Gains of every row (one pass over all stored entries)."""
        if self.nnz == 0:
            return torch.zeros(self.n, dtype=torch.float64, device=self.device)
        return torch.segment_reduce(self._terms(None, cur), "sum", lengths=self.lens)

    def gains(self, idx: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        dev = self.device
        m = idx.shape[0]
        ln = self.lens[idx]
        ends = torch.cumsum(ln, 0)
        total = int(ends[-1]) if m else 0
        if total == 0:
            return torch.zeros(m, dtype=torch.float64, device=dev)
        if 2 * total >= self.nnz:  # most of the matrix: one pass over everything is cheaper
            return self.all_gains(cur)[idx]
        starts = self.crow[idx]
        # split the rows into groups of about _SPARSE_CHUNK entries (bounded temporaries)
        cuts = [0]
        if total > _SPARSE_CHUNK:
            marks = torch.arange(_SPARSE_CHUNK, total, _SPARSE_CHUNK, device=dev)
            cuts += torch.unique(torch.searchsorted(ends, marks, right=True)).tolist()
        cuts.append(m)
        out = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            if a >= b:
                continue
            lg = ln[a:b]
            shift = starts[a:b] - (torch.cumsum(lg, 0) - lg)
            flat = torch.arange(int(lg.sum()), device=dev) + torch.repeat_interleave(shift, lg)
            out.append(torch.segment_reduce(self._terms(flat, cur), "sum", lengths=lg))
        return out[0] if len(out) == 1 else torch.cat(out)

    def entries(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, e = self.crow[j : j + 2].tolist()
        return self.col[s:e], self.val[s:e]


def _stochastic_sample_size(n: int, k: int, epsilon: float) -> int:
    return max(1, math.ceil(n / max(k, 1) * math.log(1.0 / epsilon)))


class _GreedyRows:
    """The greedy's view of the similarity; switches to a pruned sparse form when worthwhile.

    Pruning is checked at steps 1, 2, 4, 8, ...: the dense form becomes sparse once at most
    ``_SPARSE_DENSITY`` of its entries can still contribute, a sparse form is pruned again once
    at most ``_PRUNE_FRACTION`` of its entries can, and only when the result fits ``max_bytes``.
    The decisions depend only on the greedy's state, so naive and lazy runs prune at the same
    steps.
    """

    def __init__(self, rows: _DenseRows, chunk: int, max_bytes: int) -> None:
        self.rows = rows
        self.chunk = chunk
        self.max_bytes = int(max_bytes)
        # rows per block when extracting the sparse form: ~16 MiB of similarity, within the cap
        row_bytes = max(1, rows.n * torch.empty((), dtype=rows.dtype).element_size())
        self.block = max(1, min(2**24, int(max_bytes) // 2) // row_bytes)
        self.n = rows.n
        self.stored = rows.n * rows.n
        self.may_prune = rows.n >= _SPARSE_MIN_N

    def maybe_prune(self, t: int, cur: torch.Tensor) -> bool:
        """Prune if due at step ``t``; True when the representation changed from dense to sparse."""
        if not self.may_prune or t < 1 or t & (t - 1):
            return False
        r = self.rows
        entry_bytes = 16 + torch.empty((), dtype=r.dtype).element_size()  # row, col, value
        cap = self.max_bytes // entry_bytes
        if r.sparse:
            new = r.pruned(cur, int(min(_PRUNE_FRACTION * self.stored, cap)))
        else:
            # Dense gains are ~10x cheaper per entry than sparse ones: switch only once few
            # entries are live (estimated on every 16th row first).
            limit = int(min(_SPARSE_DENSITY * self.stored, cap))
            probe = r.index(torch.arange(0, self.n, 16, device=cur.device))
            if int(torch.count_nonzero(probe > cur)) * 16 > limit:
                return False
            new = _SparseRows.from_dense(r, cur, self.block, limit)
        if new is None:
            return False
        self.rows = new
        self.stored = max(new.nnz, 1)
        return not r.sparse

    def all_gains(self, cur: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        """Gains of every candidate; entries of unavailable ones are meaningless."""
        if self.rows.sparse:
            return self.rows.all_gains(cur)
        return _dense_all_gains(self.rows, cur, self.chunk)

    def gains(self, idx: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        if self.rows.sparse:
            return self.rows.gains(idx, cur)
        return _dense_gains(self.rows, idx, cur, self.chunk)

    def add(self, j: int, t: int, cur: torch.Tensor, assign: torch.Tensor) -> None:
        """Update ``cur`` and ``assign`` in place for chosen candidate ``j`` at step ``t``."""
        if self.rows.sparse:
            cols, vals = self.rows.entries(j)
            cc = cur[cols]
            assign[cols[vals > cc]] = t  # strict: ties stay with the earliest chosen
            cur[cols] = torch.maximum(cc, vals)
            return
        row = self.rows.range(j, j + 1)[0]
        better = (row > cur) | (assign < 0)
        assign.masked_fill_(better, t)
        torch.maximum(cur, row, out=cur)


def _lazy_step(
    rows: _GreedyRows, bounds: torch.Tensor, stamp: torch.Tensor, t: int, left: int, cur: torch.Tensor
) -> tuple[int, torch.Tensor]:
    """One step of lazy greedy: the exact argmax of the gains (lowest index among ties).

    ``bounds`` holds exact gains for ``stamp == t`` and upper bounds otherwise (``-inf`` for
    chosen candidates). Re-evaluate the ``_LAZY_BATCH`` largest bounds; if the best fresh gain
    beats every other bound we are done, otherwise re-evaluate every stale candidate whose bound
    reaches it (a better or an equal, lower-index candidate may hide there) and look again.
    """
    if t == 0:  # bounds are exact gains of everyone
        j = int(torch.argmax(bounds))
        return j, bounds[j].clone()
    m = min(_LAZY_BATCH, left)
    top = torch.topk(bounds, m)
    cand = torch.sort(top.indices).values  # so that argmax picks the lowest index among ties
    g = rows.gains(cand, cur)
    bounds[cand] = g
    stamp[cand] = t
    pos = int(torch.argmax(g))
    # Every bound left out of the top m is <= its smallest value.
    if m == left or bool(g[pos] > top.values[-1]):
        return int(cand[pos]), g[pos]
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=bounds.device)
    while True:
        fresh = stamp == t
        fb = torch.where(fresh, bounds, neg_inf)
        j = int(torch.argmax(fb))
        gain = fb[j]
        need = ~fresh & (bounds >= gain)
        if not bool(need.any()):
            return j, gain
        cand = need.nonzero().squeeze(1)
        bounds[cand] = rows.gains(cand, cur)
        stamp[cand] = t


def _greedy(
    oracle: _DenseRows,
    k: int,
    optimizer: str,
    epsilon: float,
    generator: torch.Generator | None,
    chunk: int,
    max_bytes: int,
) -> FLResult:
    """Greedy FL on a candidate-row oracle; see :func:`facility_location`."""
    n, dev, dt = oracle.n, oracle.device, oracle.dtype
    k = min(k, n)
    rows = _GreedyRows(oracle, chunk, max_bytes)
    cur = torch.zeros(n, dtype=dt, device=dev)
    assign = torch.full((n,), -1, dtype=torch.int64, device=dev)
    avail = torch.ones(n, dtype=torch.bool, device=dev)
    ranking = torch.empty(k, dtype=torch.int64, device=dev)
    gains = torch.empty(k, dtype=torch.float64, device=dev)
    if optimizer == "lazy" and k > 0:
        # exact gains at step 0, upper bounds later (submodularity); -inf once chosen
        bounds = rows.all_gains(cur, avail)
        stamp = torch.zeros(n, dtype=torch.int64, device=dev)  # step of each bound
    sample = _stochastic_sample_size(n, k, epsilon) if optimizer == "stochastic" else 0

    for t in range(k):
        if rows.maybe_prune(t, cur) and optimizer == "lazy":
            # Sparse sums round differently from dense ones (by < n * 2^-53 relative each):
            # inflate the stale bounds so that they remain upper bounds.
            bounds.mul_(1.0 + 4.0 * n * 2.0**-53)
        if optimizer == "naive":
            g = rows.all_gains(cur, avail).masked_fill_(~avail, float("-inf"))
            j = int(torch.argmax(g))  # first maximum: lowest index among ties
            gain = g[j]
        elif optimizer == "lazy":
            j, gain = _lazy_step(rows, bounds, stamp, t, n - t, cur)
            bounds[j] = float("-inf")
        else:  # stochastic
            left = avail.nonzero().squeeze(1)
            if sample < left.shape[0]:
                gdev = generator.device if generator is not None else torch.device("cpu")
                perm = torch.randperm(left.shape[0], generator=generator, device=gdev)[:sample]
                cand = torch.sort(left[perm.to(dev)]).values
            else:
                cand = left
            g = rows.gains(cand, cur)
            pos = torch.argmax(g)
            j = int(cand[pos])
            gain = g[pos]
        rows.add(j, t, cur, assign)
        avail[j] = False
        ranking[t] = j
        gains[t] = gain

    if k > 0:
        assign[ranking] = torch.arange(k, device=dev)  # a chosen element represents itself
        weights = torch.bincount(assign, minlength=k).to(dt)
    else:
        weights = torch.zeros(0, dtype=dt, device=dev)
    objective = float(cur.sum(dtype=torch.float64))
    return FLResult(ranking=ranking, gains=gains, weights=weights, objective=objective, assignment=assign)


# ----------------------------------------------------------------------------------------------
# public single-problem solvers


def facility_location(
    sim: torch.Tensor,
    k: int,
    optimizer: Optimizer = "lazy",
    epsilon: float = 0.01,
    generator: torch.Generator | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    ground_weights: torch.Tensor | None = None,
) -> FLResult:
    """Greedy facility location on a precomputed similarity matrix.

    * ``"naive"``: every step computes the gain of all remaining candidates at once,
      ``sum_i relu(sim[i, c] - cur[i])`` (vectorised, chunked over candidates so the temporaries
      stay under ``max_bytes``).
    * ``"lazy"`` (Minoux): keeps stale gains as upper bounds and re-evaluates only the
      candidates whose bound could still win; returns exactly the ranking and gains of
      ``"naive"`` (same tie-breaking, same float64 accumulation), usually far faster.
    * ``"stochastic"`` (Mirzasoleiman et al., 2015): each step samples
      ``ceil(n / k * log(1 / epsilon))`` of the remaining candidates with ``generator`` and
      takes the best. With ``epsilon=0.01`` this is close to lazy greedy; note that apricot's
      default ``epsilon=0.9`` samples ~``0.1 n / k`` candidates, about one per step when
      ``k ~ n / 10``, which is hardly better than random selection.

    Ties go to the lowest index. ``k >= n`` selects every element (in greedy order).

    Large problems (``n >= 1024``) switch, once at most 5% of the similarity entries can still
    raise ``cur``, to a pruned sparse copy holding only those entries (re-pruned as ``cur``
    grows, never larger than ``max_bytes``); later steps then touch a small fraction of the
    matrix. This changes no choice: naive and lazy greedy prune at the same steps and still
    agree exactly.

    Args:
        sim: ``[n, n]`` non-negative similarity, ``sim[i, j]`` between ground element ``i``
            and candidate ``j``.
        k: Number of elements to choose.
        optimizer: ``"naive"``, ``"lazy"`` or ``"stochastic"``.
        epsilon: Stochastic greedy's accuracy parameter, in (0, 1).
        generator: Required for ``"stochastic"``; its device may differ from ``sim``'s.
        max_bytes: Cap on the temporary memory of one candidate chunk and on the pruned copy.
        ground_weights: Optional ``[n]`` positive weights of the ground elements: the
            objective becomes ``F(S) = sum_i w_i max_{j in S} sim[i, j]`` (a ground element
            standing for ``w_i`` others, as a candidate of a GreeDi merge stands for its
            cluster), and the result's ``weights`` are the sums of the ground weights each
            chosen element represents (they sum to ``sum_i w_i``). The choices equal those of
            the unweighted greedy when all weights are equal.

    Returns:
        :class:`FLResult` with ``ranking``, ``gains``, ``weights`` (cluster sizes summing to n),
        ``objective`` and ``assignment``.

    Raises:
        ConfigError: bad ``k``, ``optimizer``, ``epsilon`` or missing generator.
        DataError: ``sim`` not square, not finite or negative; ``ground_weights`` not ``[n]``,
            not finite or not positive.
    """
    k = _check_k(k)
    _check_optimizer(optimizer)
    _check_max_bytes(max_bytes)
    if optimizer == "stochastic":
        _check_epsilon(epsilon)
        _need_generator(generator)
    sim = _check_sim(sim, 2)
    c = _candidate_major(sim)
    w = None
    if ground_weights is not None:
        w = _as_float(torch.as_tensor(ground_weights), "ground_weights").to(device=c.device, dtype=c.dtype)
        if w.shape != (c.shape[0],):
            raise DataError(
                f"ground_weights must have shape [n] = [{c.shape[0]}] (one per ground element). "
                f"Got {tuple(w.shape)} instead."
            )
        _check_finite(w, "ground_weights")
        if w.numel() and float(w.min()) <= 0:
            raise DataError(f"ground_weights must be > 0. Got minimum {float(w.min()):.4g} instead.")
        c = c * w.unsqueeze(0)  # candidate-major: c[j, i] = w_i sim[i, j]
    chunk = _rows_per_chunk(c.shape[0], c.element_size(), max_bytes)
    res = _greedy(_DenseRows(c), k, optimizer, float(epsilon), generator, chunk, max_bytes)
    if w is not None and res.ranking.numel():
        res.weights = torch.bincount(res.assignment, weights=w, minlength=res.ranking.shape[0]).to(c.dtype)
    return res


def _need_generator(generator: torch.Generator | None) -> None:
    if generator is None:
        raise ConfigError(
            "optimizer='stochastic' samples candidates and needs generator=torch.Generator() "
            "seeded from the run seed (see subsetlab.seeding.torch_generator)."
        )


def facility_location_embeddings(
    x: torch.Tensor,
    k: int,
    similarity: SimilarityKind = "max_minus_dist",
    optimizer: Optimizer = "lazy",
    epsilon: float = 0.01,
    generator: torch.Generator | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FLResult:
    """Greedy facility location on the similarity of embeddings, within a memory cap.

    If the ``[n, n]`` similarity fits in ``max_bytes`` it is materialised once (same as
    ``facility_location(similarity(x, kind), ...)``). Otherwise it is never materialised:
    similarity rows are computed from the embeddings on the fly, for the candidates each step
    needs, in chunks of at most ``max_bytes``; only the ``[n]`` vector of current maxima and
    the ``[n]`` gain bounds persist, plus the pruned sparse copy of the live entries once it fits
    ``max_bytes`` (see :func:`facility_location`). ``"lazy"`` is by far the best optimizer in
    that mode; ``"naive"`` recomputes all ``n^2`` similarities every step until the pruned copy
    takes over. ``"max_minus_dist"`` costs one extra pass to find the maximum distance. Results
    equal the materialised path's up to float rounding of the distances (the same ranking in
    practice; exact ties may break differently).

    Args:
        x: ``[n, d]`` embeddings.
        k: Number of elements to choose.
        similarity: ``"max_minus_dist"`` or ``"exp"`` (see :func:`similarity`).
        optimizer: ``"naive"``, ``"lazy"`` or ``"stochastic"`` (see :func:`facility_location`).
        epsilon: Stochastic greedy's accuracy parameter.
        generator: Required for ``"stochastic"``.
        max_bytes: Cap on the similarity bytes held at once.

    Returns:
        :class:`FLResult` (indices are rows of ``x``).

    Raises:
        ConfigError: bad ``k``, ``similarity``, ``optimizer``, ``epsilon`` or ``max_bytes``.
        DataError: ``x`` not 2-D or not finite.
    """
    k = _check_k(k)
    _check_kind(similarity)
    _check_optimizer(optimizer)
    _check_max_bytes(max_bytes)
    if optimizer == "stochastic":
        _check_epsilon(epsilon)
        _need_generator(generator)
    x = _check_embeddings(x, 2)
    n = x.shape[0]
    itemsize = x.element_size()
    if n * n * itemsize <= max_bytes:
        sim = _fill_similarity(x, similarity, symmetric=False)  # rows are candidates
        chunk = _rows_per_chunk(n, itemsize, max_bytes)
        return _greedy(_DenseRows(sim), k, optimizer, float(epsilon), generator, chunk, max_bytes)
    chunk = _rows_per_chunk(n, itemsize, max_bytes)
    return _greedy(_EmbeddingRows(x, similarity, chunk), k, optimizer, float(epsilon), generator, chunk, max_bytes)


# ----------------------------------------------------------------------------------------------
# batched solver


def facility_location_batched(
    x: torch.Tensor,
    k: torch.Tensor | int,
    mask: torch.Tensor | None = None,
    similarity: SimilarityKind | Literal["precomputed"] = "max_minus_dist",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FLBatchResult:
    """Naive greedy facility location on ``P`` small independent problems at once.

    The Python loop runs over the greedy step (``max k`` times); every step advances all
    problems with a handful of batched tensor ops. Each problem gets the same ranking, gains and
    weights as :func:`facility_location` with ``optimizer="naive"`` on its valid rows (gains
    agree to float64 rounding). Used by CREST (P random subsets x C classes per round) and by
    any per-class or per-batch selection of many small ground sets. Problems are processed in
    groups so that the ``[P, n, n]`` similarity and its temporaries stay under ``max_bytes``.

    Args:
        x: ``[P, n, d]`` embeddings, or ``[P, n, n]`` similarities when
            ``similarity="precomputed"`` (``x[p, i, j]`` between ground ``i`` and candidate
            ``j``; non-negative).
        k: Per-problem budgets, ``[P]`` int tensor or one int; clipped to each problem's number
            of valid rows.
        mask: ``[P, n]`` bool, True for valid rows; padding rows are neither chosen nor counted.
        similarity: ``"max_minus_dist"``, ``"exp"`` or ``"precomputed"``.
        max_bytes: Cap on the bytes of similarity (plus temporaries) per group of problems.

    Returns:
        :class:`FLBatchResult` padded to ``K = max k`` with ``-1`` indices and 0 weights.

    Raises:
        ConfigError: bad ``k``, ``similarity`` or ``max_bytes``.
        DataError: bad shapes, non-finite values, negative precomputed similarity.
    """
    _check_max_bytes(max_bytes)
    if similarity == "precomputed":
        x = _check_sim(x, 3)
    else:
        _check_kind(similarity)
        x = _check_embeddings(x, 3)
    P, n = x.shape[0], x.shape[1]
    dev = x.device
    if mask is None:
        mask = torch.ones(P, n, dtype=torch.bool, device=dev)
    mask = _check_mask(mask.to(dev), P, n)
    kt = _batched_k(k, P, dev)
    k_eff = torch.minimum(kt, mask.sum(1))
    K = int(k_eff.max()) if P else 0
    dt = x.dtype

    ranking = torch.full((P, K), -1, dtype=torch.int64, device=dev)
    gains = torch.zeros(P, K, dtype=torch.float64, device=dev)
    weights = torch.zeros(P, K, dtype=dt, device=dev)
    objective = torch.zeros(P, dtype=torch.float64, device=dev)
    assignment = torch.full((P, n), -1, dtype=torch.int64, device=dev)
    group = max(1, int(max_bytes) // max(1, 3 * n * n * 4))
    for s in range(0, P, group):
        e = min(s + group, P)
        if similarity == "precomputed":
            c = x[s:e].masked_fill(~(mask[s:e].unsqueeze(2) & mask[s:e].unsqueeze(1)), 0.0)
            c = c if torch.equal(c, c.mT) else c.mT.contiguous()
        else:
            c = similarity_batched(x[s:e], mask[s:e], similarity)
        r = _greedy_batched(c, mask[s:e], k_eff[s:e], K)
        ranking[s:e], gains[s:e], weights[s:e], objective[s:e], assignment[s:e] = r
    return FLBatchResult(ranking, gains, weights, objective, k_eff, assignment)


def _batched_k(k: torch.Tensor | int, P: int, dev: torch.device) -> torch.Tensor:
    if isinstance(k, torch.Tensor):
        if k.shape != (P,) or k.is_floating_point() or (k.numel() and int(k.min()) < 0):
            raise ConfigError(
                f"k must be one non-negative int or an int tensor of shape {(P,)} (one budget per "
                f"problem). Got a {k.dtype} tensor of shape {tuple(k.shape)} instead."
            )
        return k.to(device=dev, dtype=torch.int64)
    return torch.full((P,), _check_k(k), dtype=torch.int64, device=dev)


def _greedy_batched(
    c: torch.Tensor, mask: torch.Tensor, k_eff: torch.Tensor, K: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    P, n, _ = c.shape
    dev, dt = c.device, c.dtype
    cur = torch.zeros(P, n, dtype=dt, device=dev)
    assign = torch.full((P, n), -1, dtype=torch.int64, device=dev)
    avail = mask.clone()
    ranking = torch.full((P, K), -1, dtype=torch.int64, device=dev)
    gains = torch.zeros(P, K, dtype=torch.float64, device=dev)
    rows_p = torch.arange(P, device=dev)
    for t in range(K):
        g = (c - cur.unsqueeze(1)).clamp_(min=0.0).sum(2, dtype=torch.float64)
        g.masked_fill_(~avail, float("-inf"))
        j = torch.argmax(g, dim=1)  # [P], lowest index among ties
        active = k_eff > t
        row = c[rows_p, j]  # [P, n]
        better = ((row > cur) | (assign < 0)) & active.unsqueeze(1)
        assign = torch.where(better, t, assign)
        cur = torch.where(active.unsqueeze(1), torch.maximum(cur, row), cur)
        avail[rows_p, j] &= ~active
        ranking[:, t] = torch.where(active, j, -1)
        gains[:, t] = torch.where(active, g[rows_p, j], 0.0)
    sel = ranking >= 0
    # A chosen element represents itself; padding entries write to a dummy column n.
    pos = torch.arange(K, device=dev).expand(P, K)
    ext = torch.cat([assign, assign.new_zeros(P, 1)], dim=1)
    ext.scatter_(1, torch.where(sel, ranking, n), torch.where(sel, pos, 0))
    assign = ext[:, :n].masked_fill_(~mask, -1)
    counts = torch.zeros(P, K + 1, dtype=dt, device=dev)
    counts.scatter_add_(1, assign + 1, torch.ones(P, n, dtype=dt, device=dev))
    weights = counts[:, 1:]
    objective = (cur * mask).sum(1, dtype=torch.float64)
    return ranking, gains, weights, objective, assign


def pack_groups(groups: torch.Tensor, num_groups: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ragged groups (e.g. classes, or random subsets x classes) into a batch.

    Args:
        groups: ``[N]`` int64 group id of each row, in ``[0, num_groups)``.
        num_groups: Number of groups ``G``; ``groups.max() + 1`` when None.

    Returns:
        ``(index, mask)``: ``index`` ``[G, m]`` int64 with the rows of each group in increasing
        order, padded with ``-1`` (``m`` = largest group), and ``mask = index >= 0``. Gather
        embeddings with ``x[index.clamp(min=0)]`` and map results back with
        :meth:`FLBatchResult.flat`.
    """
    if groups.ndim != 1 or groups.is_floating_point():
        raise DataError(f"groups must be a 1-D integer tensor. Got {groups.dtype} of shape {tuple(groups.shape)}.")
    groups = groups.to(torch.int64)
    dev = groups.device
    G = int(groups.max()) + 1 if num_groups is None and groups.numel() else int(num_groups or 0)
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= G):
        raise DataError(f"group ids must lie in [0, {G}). Got range [{int(groups.min())}, {int(groups.max())}].")
    counts = torch.bincount(groups, minlength=G)
    m = int(counts.max()) if G else 0
    order = torch.argsort(groups, stable=True)
    gs = groups[order]
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(groups.numel(), device=dev) - starts[gs]
    index = torch.full((G, m), -1, dtype=torch.int64, device=dev)
    index[gs, pos] = order
    return index, index >= 0


# ----------------------------------------------------------------------------------------------
# apricot backend and dispatch


def facility_location_apricot(
    x: torch.Tensor,
    k: int,
    similarity: SimilarityKind | Literal["precomputed"] = "precomputed",
    optimizer: Literal["lazy", "stochastic"] = "lazy",
    epsilon: float = 0.01,
    random_state: int | None = None,
) -> FLResult:
    """Facility location with apricot (``FacilityLocationSelection``, ``metric="precomputed"``).

    The similarity (given, or computed with torch from embeddings) is passed to apricot as a
    dense float64 NumPy array on the CPU; the result is mapped back to an :class:`FLResult` on
    ``x``'s device, with weights, assignment and objective computed here from the similarity.
    Kept for comparison with the peer libraries; the torch solvers are faster.

    Notes:
        * Every ``fit()`` compiles apricot's numba kernels again: about 1-1.5 s per call, so
          many small fits are dominated by compilation.
        * ``n_neighbors=`` (sparse k-NN similarity) is broken on NumPy 2 and is not used. A
          sparse similarity would have to be a ``scipy.sparse.csr_matrix`` with int32
          ``indices``/``indptr`` (apricot's kernels are compiled for int32); this wrapper only
          passes dense arrays.
        * apricot's stochastic greedy defaults to ``epsilon=0.9`` (about one candidate per
          step, near random); this wrapper passes ``epsilon`` (default 0.01) explicitly.
        * apricot breaks ties by its own order, so rankings may differ from the torch solvers
          where gains tie exactly; objectives agree.

    Args:
        x: ``[n, n]`` similarity (``similarity="precomputed"``) or ``[n, d]`` embeddings.
        k: Number of elements to choose (clipped to n).
        similarity: ``"precomputed"``, ``"max_minus_dist"`` or ``"exp"``.
        optimizer: ``"lazy"`` or ``"stochastic"``.
        epsilon: Stochastic greedy's accuracy parameter.
        random_state: Seed for apricot's stochastic greedy (derive it from the run seed).

    Returns:
        :class:`FLResult`.

    Raises:
        MissingDependencyError: apricot-select is not installed.
        ConfigError: bad ``k``, ``similarity``, ``optimizer`` or ``epsilon``.
        DataError: bad shapes, non-finite values, negative similarity.
    """
    k = _check_k(k)
    _check_optimizer(optimizer, _APRICOT_OPTIMIZERS)
    if optimizer == "stochastic":
        _check_epsilon(epsilon)
    if similarity == "precomputed":
        c = _candidate_major(_check_sim(x, 2))
    else:
        _check_kind(similarity)
        c = _similarity(x, similarity)
    try:
        import apricot  # noqa: PLC0415 - optional, heavy (numba)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "facility_location_apricot needs the package 'apricot-select' (with numba). "
            "Install it with: pip install apricot-select, or use backend='torch'."
        ) from exc
    import numpy as np  # noqa: PLC0415

    n = c.shape[0]
    k = min(k, n)
    dev, dt = c.device, c.dtype
    if k == 0:
        return FLResult(
            torch.zeros(0, dtype=torch.int64, device=dev), torch.zeros(0, dtype=torch.float64, device=dev),
            torch.zeros(0, dtype=dt, device=dev), 0.0, torch.full((n,), -1, dtype=torch.int64, device=dev),
        )
    arr = np.ascontiguousarray(c.detach().to("cpu", torch.float64).numpy())
    kwds = {"epsilon": float(epsilon)} if optimizer == "stochastic" else {}
    sel = apricot.FacilityLocationSelection(
        k, metric="precomputed", optimizer=optimizer, optimizer_kwds=kwds, random_state=random_state
    )
    sel.fit(arr)
    ranking = torch.as_tensor(np.asarray(sel.ranking, dtype=np.int64), device=dev)
    gains = torch.as_tensor(np.asarray(sel.gains, dtype=np.float64), device=dev)
    weights, objective, assign = _weights_of(c, ranking)
    return FLResult(ranking, gains, weights, objective, assign)


def _weights_of(c: torch.Tensor, ranking: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Cluster sizes, objective and assignment of a chosen set on candidate-major ``c``."""
    k = ranking.shape[0]
    rows = c.index_select(0, ranking)  # [k, n]
    assign = torch.argmax(rows, dim=0)  # first maximum: earliest chosen among ties
    assign[ranking] = torch.arange(k, device=c.device)
    weights = torch.bincount(assign, minlength=k).to(c.dtype)
    objective = float(rows.amax(0).sum(dtype=torch.float64))
    return weights, objective, assign


def select_facility_location(
    x: torch.Tensor,
    k: int,
    backend: Backend = "torch",
    similarity: SimilarityKind | Literal["precomputed"] = "max_minus_dist",
    optimizer: Optimizer = "lazy",
    epsilon: float = 0.01,
    generator: torch.Generator | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FLResult:
    """One entry point for strategies: facility location by config strings.

    Args:
        x: ``[n, d]`` embeddings, or ``[n, n]`` similarity with ``similarity="precomputed"``.
        k: Number of elements to choose.
        backend: ``"torch"`` (:func:`facility_location_embeddings` /
            :func:`facility_location`) or ``"apricot"`` (:func:`facility_location_apricot`).
        similarity: ``"max_minus_dist"``, ``"exp"`` or ``"precomputed"``.
        optimizer: ``"naive"``, ``"lazy"`` or ``"stochastic"`` (apricot: lazy or stochastic).
        epsilon: Stochastic greedy's accuracy parameter.
        generator: Required for ``"stochastic"``; for apricot a seed is drawn from it.
        max_bytes: Memory cap of the torch backend (see :func:`facility_location_embeddings`).

    Returns:
        :class:`FLResult`.

    Raises:
        ConfigError: unknown backend, similarity or optimizer, or bad values.
        MissingDependencyError: ``backend="apricot"`` without apricot-select installed.
    """
    if backend not in _BACKENDS:
        raise ConfigError(f"The facility-location backend must be one of {list(_BACKENDS)}. Got {backend!r} instead.")
    if similarity != "precomputed":
        _check_kind(similarity)
    if backend == "apricot":
        _check_optimizer(optimizer, _APRICOT_OPTIMIZERS)
        seed = None
        if optimizer == "stochastic":
            _need_generator(generator)
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
        return facility_location_apricot(x, k, similarity, optimizer, epsilon, seed)
    if similarity == "precomputed":
        return facility_location(x, k, optimizer, epsilon, generator, max_bytes)
    return facility_location_embeddings(x, k, similarity, optimizer, epsilon, generator, max_bytes)


# ----------------------------------------------------------------------------------------------
# non-negative orthogonal matching pursuit


def nn_omp(
    A: torch.Tensor,
    b: torch.Tensor,
    k: int,
    lam: float = 0.5,
    eps: float = 1e-4,
    positive: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthogonal matching pursuit with ridge and non-negativity (GradMatch's solver).

    Finds at most ``k`` atoms ``S`` and weights ``x`` so that ``A[S].T @ x`` approximates
    ``b``. Repeat until ``k`` atoms are held or ``||r|| / ||b|| < eps``:

    1. pick the atom outside ``S`` with the largest projection ``(A @ r)``; stop if it is not
       positive (``positive=False``: largest ``|A @ r|``);
    2. with it added, solve the ridge problem ``min ||A_S^T x - b||^2 + lam ||x||^2`` (normal
       equations ``(A_S A_S^T + lam I) x = A_S b``), subject to ``x >= 0``;
    3. drop the atoms whose coefficient is 0 (they may be picked again later);
    4. ``r = b - A_S^T x``.

    Non-negativity is exact, not clamp-and-drop: step 2 is solved by the Lawson-Hanson
    active-set method restricted to the support plus the new atom, warm-started from the
    previous solution (when an unconstrained solve turns a coefficient negative, move toward it
    only until the first coefficient reaches 0, drop that atom, re-solve; finally re-admit a
    dropped atom whose gradient is still positive). So each step's ``x`` equals NNLS on
    ``S + {new atom}``. Since an atom is only added when its gradient is positive, this is
    Lawson-Hanson NNLS stopped at ``k`` atoms. The Cholesky factor of
    ``A_S A_S^T + lam I`` is extended by one row per step (float64, on ``A``'s device) and
    refactorised from the kept Gram matrix only when atoms are dropped; the per-step cost is
    one ``A @ r`` product (``n_atoms x d``) plus ``O(|S|^2)``.

    Args:
        A: ``[n_atoms, d]`` atoms as rows (e.g. per-example gradients).
        b: ``[d]`` target (e.g. the sum of the ground set's gradients).
        k: Maximum number of atoms.
        lam: Ridge coefficient, >= 0 (CORDS default 0.5).
        eps: Stop when ``||r|| / ||b|| < eps``.
        positive: Enforce ``x >= 0`` (GradMatch); False gives plain ridge OMP.

    Returns:
        ``(indices, weights)``: ``[m]`` int64 atom indices (``m <= k``) in the order they
        entered the support, and ``[m]`` weights in ``A``'s dtype (all > 0 when ``positive``).

    Raises:
        ConfigError: bad ``k``, ``lam`` or ``eps``.
        DataError: shapes do not match, or non-finite values.
    """
    k = _check_k(k)
    if not (float(lam) >= 0.0):
        raise ConfigError(f"lam (ridge coefficient) of nn_omp must be >= 0. Got {lam!r} instead.")
    if not (float(eps) >= 0.0):
        raise ConfigError(f"eps (relative residual to stop at) of nn_omp must be >= 0. Got {eps!r} instead.")
    A = _as_float(A, "A")
    b = _as_float(b, "b")
    if A.ndim != 2 or b.ndim != 1 or A.shape[1] != b.shape[0]:
        raise DataError(
            f"nn_omp needs A of shape [n_atoms, d] and b of shape [d]. Got A {tuple(A.shape)} and b {tuple(b.shape)}."
        )
    _check_finite(A, "A")
    _check_finite(b, "b")
    return _NNOMP(A, b.to(A.device), min(k, A.shape[0]), float(lam), float(eps), positive).run()


class _NNOMP:
    """State of one NN-OMP run (buffers for the support, its Gram matrix and Cholesky factor)."""

    def __init__(self, A: torch.Tensor, b: torch.Tensor, k: int, lam: float, eps: float, positive: bool) -> None:
        self.A, self.k, self.lam, self.eps, self.positive = A, k, lam, eps, positive
        dev = A.device
        f64 = torch.float64
        self.b = b.to(f64)
        self.bnorm = float(torch.linalg.vector_norm(self.b))
        n, d = A.shape
        self.AS = torch.zeros(k, d, dtype=f64, device=dev)  # support rows, float64
        self.G = torch.zeros(k, k, dtype=f64, device=dev)  # Gram of the support (+ lam on diag)
        self.L = torch.zeros(k, k, dtype=f64, device=dev)  # its Cholesky factor
        self.h = torch.zeros(k, dtype=f64, device=dev)  # A_S b
        self.S: list[int] = []
        self.stuck = torch.zeros(n, dtype=torch.bool, device=dev)  # atoms that cannot make progress
        self.in_S = torch.zeros(n, dtype=torch.bool, device=dev)

    @property
    def s(self) -> int:
        return len(self.S)

    def _append(self, j: int) -> bool:
        """Add atom j to the support and extend the Cholesky factor; False if dependent."""
        s = self.s
        a = self.A[j].to(torch.float64)
        g = self.AS[:s] @ a
        diag = float(a @ a) + self.lam
        if s:
            l = torch.linalg.solve_triangular(self.L[:s, :s], g.unsqueeze(1), upper=False).squeeze(1)
            piv = diag - float(l @ l)
        else:
            l = g
            piv = diag
        if not piv > 1e-12 * max(diag, 1e-300):
            return False
        self.AS[s] = a
        self.G[s, :s] = g
        self.G[:s, s] = g
        self.G[s, s] = diag
        self.L[s, :s] = l
        self.L[s, s] = math.sqrt(piv)
        self.h[s] = a @ self.b
        self.S.append(j)
        self.in_S[j] = True
        return True

    def _remove(self, keep: torch.Tensor) -> None:
        """Keep only the support positions where ``keep``; refactorise."""
        s = self.s
        idx = keep.nonzero().squeeze(1)
        m = idx.shape[0]
        self.AS[:m] = self.AS[:s].index_select(0, idx)
        self.h[:m] = self.h[:s].index_select(0, idx)
        self.G[:m, :m] = self.G[:s, :s].index_select(0, idx).index_select(1, idx)
        if m:
            self.L[:m, :m] = torch.linalg.cholesky(self.G[:m, :m])
        keep_l = keep.tolist()
        for j, kp in zip(self.S, keep_l):
            if not kp:
                self.in_S[j] = False
        self.S = [j for j, kp in zip(self.S, keep_l) if kp]

    def _solve(self) -> torch.Tensor:
        s = self.s
        return torch.cholesky_solve(self.h[:s].unsqueeze(1), self.L[:s, :s]).squeeze(1)

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.b - self.AS[: self.s].T @ x

    def _nnls_step(self, x: torch.Tensor) -> torch.Tensor:
        """Lawson-Hanson inner loop from feasible ``x`` (last entry = the new atom, 0)."""
        removed: list[tuple[int, torch.Tensor]] = []
        while True:
            z = self._solve()
            neg = z <= 0
            if bool(neg.any()):
                xn = x[neg]
                den = xn - z[neg]  # >= 0; 0 only when both are 0
                alpha = torch.min(torch.where(den > 0, xn / den.clamp(min=1e-300), 0.0))
                x = x + alpha * (z - x)
                drop = neg & (x <= 1e-12 * x.abs().max().clamp(min=1e-300))
                if not bool(drop.any()):  # rounding: drop the limiting coefficient
                    drop = torch.zeros_like(neg)
                    cand = neg.nonzero().squeeze(1)
                    drop[cand[torch.argmin(x[cand])]] = True
                for pos in drop.nonzero().squeeze(1).tolist():
                    removed.append((self.S[pos], self.AS[pos].clone()))
                self._remove(~drop)
                x = x[~drop].clamp(min=0.0)
                continue
            x = z
            if not removed:
                return x
            # Re-admit the dropped atom with the most positive gradient, if any (restricted KKT).
            r = self._residual(x)
            rows = torch.stack([row for _, row in removed])
            grad = rows @ r
            tol = 1e-10 * torch.linalg.vector_norm(rows, dim=1) * max(self.bnorm, 1e-300)
            best = int(torch.argmax(grad - tol))
            if not bool(grad[best] > tol[best]):
                return x
            j, _ = removed.pop(best)
            if not self._append(j):
                return x
            x = torch.cat([x, x.new_zeros(1)])

    def run(self) -> tuple[torch.Tensor, torch.Tensor]:
        A, dev = self.A, self.A.device
        empty = (torch.zeros(0, dtype=torch.int64, device=dev), torch.zeros(0, dtype=A.dtype, device=dev))
        if self.k == 0 or self.bnorm == 0.0:
            return empty
        x = torch.zeros(0, dtype=torch.float64, device=dev)
        r = self.b.clone()
        max_iter = 4 * self.k + 16
        for _ in range(max_iter):
            if self.s >= self.k or float(torch.linalg.vector_norm(r)) < self.eps * self.bnorm:
                break
            p = A @ r.to(A.dtype)
            if not self.positive:
                p = p.abs()
            p = p.masked_fill(self.in_S | self.stuck, float("-inf"))
            j = int(torch.argmax(p))
            if not float(p[j]) > 0.0:
                break
            if not self._append(j):  # numerically dependent on the support: never pick again
                self.stuck[j] = True
                continue
            if self.positive:
                before = list(self.S)
                x = self._nnls_step(torch.cat([x, x.new_zeros(1)]))
                if self.S == before[:-1]:
                    self.stuck[j] = True  # rounding: the new atom cannot enter, do not retry it
            else:
                x = self._solve()
            r = self._residual(x)
        keep = x > 0 if self.positive else x != 0
        idx = torch.tensor(self.S, dtype=torch.int64, device=dev)[keep]
        return idx, x[keep].to(A.dtype)
