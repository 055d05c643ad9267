"""Gain oracles: what the greedy optimizers need from an objective, and facility location's.

The optimizers of :mod:`subsetlab.submodular.greedy` see an objective only through a
:class:`GainOracle`: the gains of all or some candidates given the set chosen so far, and
``add(j)`` to choose one. Facility location implements it twice: :class:`FLOracle` on one ground
set, over one of three representations of the candidate-major similarity (below), and
:class:`BatchedFLOracle` on ``P`` padded problems at once. Glister's Taylor gains implement it
in :mod:`strategies.glister`.

The FL greedy only ever needs (a) the float64 gains of a set of candidates given the current
maxima ``cur`` and (b) the entries of the chosen candidate's row. Three representations provide
them: a dense candidate-major matrix, rows computed on the fly from embeddings, and (once most
entries can no longer contribute) a pruned sparse matrix holding only the entries still above
``cur``. Within one representation a candidate's gain is always summed in the same order,
whichever other candidates are evaluated with it, so naive and lazy greedy agree bit for bit.
"""

from __future__ import annotations

from typing import Protocol

import torch

from subsetlab.submodular._base import FLResult
from subsetlab.submodular.similarities import _centered, _dist_index, _dist_rows, _to_sim_

__all__ = ["GainOracle", "FLOracle", "BatchedFLOracle"]

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


class GainOracle(Protocol):
    """The state of one greedy run over an objective, as the optimizers use it.

    An oracle has ``n`` candidates, or ``P`` independent problems of ``n`` candidates each
    (a batched oracle: every tensor below has a leading ``[P]`` dimension and every step adds
    one candidate per problem). Ties are the optimizers' business: they take the lowest index.

    Attributes:
        avail: ``[n]`` bool, the candidates that may still be chosen (updated in place by
            :meth:`add`).
    """

    avail: torch.Tensor

    def begin_step(self, t: int) -> float:
        """Called before step ``t``. Returns the factor (>= 1) by which gains evaluated before
        must be multiplied to remain upper bounds on later gains (1.0 when nothing changed;
        lazy greedy applies it to its stale bounds)."""
        ...

    def all_gains(self) -> torch.Tensor:
        """The gains of every candidate, ``-inf`` where not :attr:`avail` (a fresh tensor)."""
        ...

    def gains(self, idx: torch.Tensor) -> torch.Tensor:
        """The gains of the candidates ``idx`` (1-D; lazy and stochastic greedy only)."""
        ...

    def add(self, j: torch.Tensor | int, gain: torch.Tensor) -> bool:
        """Choose candidate ``j`` (``[P]`` for a batched oracle), whose gain was ``gain``.

        Returns:
            True when candidates other than ``j`` left :attr:`avail` as well.
        """
        ...


# ----------------------------------------------------------------------------------------------
# the three representations of facility location's candidate-major similarity


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


# ----------------------------------------------------------------------------------------------
# facility location's oracles


class FLOracle:
    """Facility location on one ground set (a :class:`GainOracle`), choosing up to ``k``.

    Holds the current maxima ``cur``, the assignment of the ground elements and the choices so
    far; the similarity switches to a pruned sparse form when worthwhile. Pruning is checked at
    steps 1, 2, 4, 8, ...: the dense form becomes sparse once at most ``_SPARSE_DENSITY`` of
    its entries can still contribute, a sparse form is pruned again once at most
    ``_PRUNE_FRACTION`` of its entries can, and only when the result fits ``max_bytes``. The
    decisions depend only on the greedy's state, so naive and lazy runs prune at the same
    steps.
    """

    def __init__(self, rows: _DenseRows, k: int, chunk: int, max_bytes: int) -> None:
        self.rows = rows
        self.chunk = chunk
        self.max_bytes = int(max_bytes)
        # rows per block when extracting the sparse form: ~16 MiB of similarity, within the cap
        row_bytes = max(1, rows.n * torch.empty((), dtype=rows.dtype).element_size())
        self.block = max(1, min(2**24, int(max_bytes) // 2) // row_bytes)
        self.n = n = rows.n
        self.stored = n * n
        self.may_prune = n >= _SPARSE_MIN_N
        dev = rows.device
        self.cur = torch.zeros(n, dtype=rows.dtype, device=dev)
        self.assign = torch.full((n,), -1, dtype=torch.int64, device=dev)
        self.avail = torch.ones(n, dtype=torch.bool, device=dev)
        self.ranking = torch.empty(k, dtype=torch.int64, device=dev)
        self.chosen_gains = torch.empty(k, dtype=torch.float64, device=dev)
        self.t = 0

    def begin_step(self, t: int) -> float:
        """Prune if due at step ``t``; sparse sums round differently from dense ones (by
        < n * 2^-53 relative each), so a switch from dense to sparse inflates stale bounds."""
        if self._maybe_prune(t):
            return 1.0 + 4.0 * self.n * 2.0**-53
        return 1.0

    def _maybe_prune(self, t: int) -> bool:
        """Prune if due at step ``t``; True when the representation changed from dense to sparse."""
        if not self.may_prune or t < 1 or t & (t - 1):
            return False
        r, cur = self.rows, self.cur
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

    def all_gains(self) -> torch.Tensor:
        """float64 gains ``sum_i relu(sim[i, c] - cur[i])`` of every candidate ``c`` (``-inf``
        once chosen), chunked over candidates."""
        if self.rows.sparse:
            g = self.rows.all_gains(self.cur)
        else:
            g = _dense_all_gains(self.rows, self.cur, self.chunk)
        return g.masked_fill_(~self.avail, float("-inf"))

    def gains(self, idx: torch.Tensor) -> torch.Tensor:
        """float64 gains of the candidates ``idx`` (bit for bit those of :meth:`all_gains`)."""
        if self.rows.sparse:
            return self.rows.gains(idx, self.cur)
        return _dense_gains(self.rows, idx, self.cur, self.chunk)

    def add(self, j: torch.Tensor | int, gain: torch.Tensor) -> bool:
        """Choose ``j``: update ``cur`` and the assignment (ties stay with the earliest chosen)."""
        j, t, cur, assign = int(j), self.t, self.cur, self.assign
        if self.rows.sparse:
            cols, vals = self.rows.entries(j)
            cc = cur[cols]
            assign[cols[vals > cc]] = t  # strict: ties stay with the earliest chosen
            cur[cols] = torch.maximum(cc, vals)
        else:
            row = self.rows.range(j, j + 1)[0]
            better = (row > cur) | (assign < 0)
            assign.masked_fill_(better, t)
            torch.maximum(cur, row, out=cur)
        self.avail[j] = False
        self.ranking[t] = j
        self.chosen_gains[t] = gain
        self.t += 1
        return False

    def result(self) -> FLResult:
        """The :class:`FLResult` of the elements chosen so far (as many as ``k``)."""
        k, dev, assign = self.ranking.shape[0], self.cur.device, self.assign
        if k > 0:
            assign[self.ranking] = torch.arange(k, device=dev)  # a chosen element represents itself
            weights = torch.bincount(assign, minlength=k).to(self.cur.dtype)
        else:
            weights = torch.zeros(0, dtype=self.cur.dtype, device=dev)
        objective = float(self.cur.sum(dtype=torch.float64))
        return FLResult(self.ranking, self.chosen_gains, weights, objective, assign)


class BatchedFLOracle:
    """Facility location on ``P`` padded problems at once (a batched :class:`GainOracle`).

    ``c`` is the ``[P, n, n]`` candidate-major similarity (0 on padding), ``mask`` the
    ``[P, n]`` valid rows and ``k_eff`` the ``[P]`` budgets (at most ``K`` and the valid rows);
    a problem whose budget is spent ignores later steps. Naive greedy only (:meth:`gains` of a
    subset is not provided).
    """

    def __init__(self, c: torch.Tensor, mask: torch.Tensor, k_eff: torch.Tensor, K: int) -> None:
        P, n, _ = c.shape
        dev = c.device
        self.c, self.mask, self.k_eff = c, mask, k_eff
        self.cur = torch.zeros(P, n, dtype=c.dtype, device=dev)
        self.assign = torch.full((P, n), -1, dtype=torch.int64, device=dev)
        self.avail = mask.clone()
        self.ranking = torch.full((P, K), -1, dtype=torch.int64, device=dev)
        self.chosen_gains = torch.zeros(P, K, dtype=torch.float64, device=dev)
        self.rows_p = torch.arange(P, device=dev)
        self.t = 0

    def begin_step(self, t: int) -> float:
        """Nothing to do: 1.0."""
        return 1.0

    def all_gains(self) -> torch.Tensor:
        """``[P, n]`` float64 gains of every candidate of every problem (``-inf`` where not
        available: chosen or padding)."""
        g = (self.c - self.cur.unsqueeze(1)).clamp_(min=0.0).sum(2, dtype=torch.float64)
        return g.masked_fill_(~self.avail, float("-inf"))

    def gains(self, idx: torch.Tensor) -> torch.Tensor:
        """Not provided (naive greedy only): raises NotImplementedError."""
        raise NotImplementedError("BatchedFLOracle supports naive greedy only (all_gains).")

    def add(self, j: torch.Tensor | int, gain: torch.Tensor) -> bool:
        """Choose ``j[p]`` in every problem ``p`` whose budget is not spent yet."""
        t, rows_p = self.t, self.rows_p
        active = self.k_eff > t
        row = self.c[rows_p, j]  # [P, n]
        better = ((row > self.cur) | (self.assign < 0)) & active.unsqueeze(1)
        self.assign = torch.where(better, t, self.assign)
        self.cur = torch.where(active.unsqueeze(1), torch.maximum(self.cur, row), self.cur)
        self.avail[rows_p, j] &= ~active
        self.ranking[:, t] = torch.where(active, j, -1)
        self.chosen_gains[:, t] = torch.where(active, gain, 0.0)
        self.t += 1
        return False

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ranking, gains, weights, objective, assignment)`` of the ``P`` problems."""
        ranking, mask, dt = self.ranking, self.mask, self.c.dtype
        P, K = ranking.shape
        n, dev = mask.shape[1], mask.device
        sel = ranking >= 0
        # A chosen element represents itself; padding entries write to a dummy column n.
        pos = torch.arange(K, device=dev).expand(P, K)
        ext = torch.cat([self.assign, self.assign.new_zeros(P, 1)], dim=1)
        ext.scatter_(1, torch.where(sel, ranking, n), torch.where(sel, pos, 0))
        assign = ext[:, :n].masked_fill_(~mask, -1)
        counts = torch.zeros(P, K + 1, dtype=dt, device=dev)
        counts.scatter_add_(1, assign + 1, torch.ones(P, n, dtype=dt, device=dev))
        weights = counts[:, 1:]
        objective = (self.cur * mask).sum(1, dtype=torch.float64)
        return ranking, self.chosen_gains, weights, objective, assign
