"""Non-negative orthogonal matching pursuit (GradMatch's solver).

:func:`nn_omp` finds a few atoms (per-example gradients) with non-negative weights whose
weighted sum matches a target.
"""

from __future__ import annotations

import math

import torch

from subsetlab.errors import ConfigError, DataError
from subsetlab.submodular._base import _as_float, _check_finite, _check_k

__all__ = ["nn_omp"]


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
